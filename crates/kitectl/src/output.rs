//! Printing: aligned tables and JSON as Go prints it.

use serde_json::Value;

/// Rows as columns padded to the widest cell (two spaces between columns; the last column
/// is not padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Numbers that are whole are written without a fraction (`16`, not `16.0`), as Go's
/// encoder writes the float64 results of Go kites.
pub fn go_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                    *n = serde_json::Number::from(f as i64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(go_numbers),
        Value::Object(o) => o.values_mut().for_each(go_numbers),
        _ => {}
    }
}

/// The JSON of `v` (Go-style numbers), compact or pretty.
pub fn json(mut v: Value, pretty: bool) -> String {
    go_numbers(&mut v);
    if pretty {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        v.to_string()
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn unix_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB", "C"],
            &[vec!["xxx".into(), "y".into(), "z".into()]],
        );
        assert_eq!(t, "A    BB  C\nxxx  y   z\n");
    }

    #[test]
    fn numbers_like_go() {
        assert_eq!(json(json!(16.0), false), "16");
        assert_eq!(json(json!([1.5, {"a": 2.0}]), false), "[1.5,{\"a\":2}]");
    }

    #[test]
    fn times() {
        assert_eq!(unix_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(unix_time(1_529_999_700), "2018-06-26 07:55:00 UTC");
    }
}
