//! Markdown tables and number formatting.

/// A markdown table, printed with aligned columns.
pub(crate) struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let n = self.head.len();
        let mut width: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(c.chars().count());
                // Text left, numbers right.
                if i == 0 || !c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-') {
                    s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
                } else {
                    s.push_str(&format!(" {}{c} |", " ".repeat(pad)));
                }
            }
            s
        };
        let mut out = line(&self.head);
        out.push('\n');
        out.push('|');
        for (i, w) in width.iter().enumerate() {
            let dashes = "-".repeat((*w).max(3));
            if i == 0 {
                out.push_str(&format!(" {dashes} |"));
            } else {
                out.push_str(&format!(" {}: |", &dashes[1..]));
            }
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        println!("{}", self.render());
    }
}

/// `12345.6` → `12,346`.
pub(crate) fn int(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Milliseconds with 2 decimals (3 below 1 ms).
pub(crate) fn ms(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

/// `a / b` as a percentage.
pub(crate) fn pct(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.0}%", 100.0 * a / b)
    } else {
        "-".into()
    }
}

/// `a / b` as a factor (`×2.3`).
pub(crate) fn times(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("×{:.1}", a / b)
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(int(1234567.4), "1,234,567");
        assert_eq!(int(999.0), "999");
        assert_eq!(ms(0.1234), "0.123");
        assert_eq!(ms(12.345), "12.35");
        assert_eq!(pct(1.0, 4.0), "25%");
        assert_eq!(times(3.0, 2.0), "×1.5");
    }

    #[test]
    fn renders() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["x".into(), "1".into()]);
        assert_eq!(t.render(), "| a | b |\n| --- | --: |\n| x | 1 |\n");
    }
}
