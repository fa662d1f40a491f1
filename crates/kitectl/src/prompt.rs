//! Asking the user for missing values when stdin is a terminal.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result};

/// Whether prompting is possible (stdin is a terminal).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks `question` on stderr and reads one line; `default` is shown and returned for an
/// empty answer.
pub fn ask(question: &str, default: Option<&str>) -> Result<String> {
    let mut err = std::io::stderr().lock();
    match default {
        Some(d) if !d.is_empty() => write!(err, "{question} [{d}]: ")?,
        _ => write!(err, "{question}: ")?,
    }
    err.flush()?;
    drop(err);
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    let answer = line.trim().to_owned();
    Ok(if answer.is_empty() {
        default.unwrap_or_default().to_owned()
    } else {
        answer
    })
}

/// Asks for a secret without echoing it.
pub fn ask_secret(question: &str) -> Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
    }
    let answer = ask(question, None);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, OptionalActions::Now, t);
        eprintln!();
    }
    answer
}
