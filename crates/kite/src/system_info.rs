//! Figures for the `kite.systemInfo` default method (PROTOCOL.md 5).
//!
//! ```
//! let info = kite::system_info::SystemInfo::collect().unwrap();
//! assert_eq!(info.state, "RUNNING");
//! let json = serde_json::to_string(&info).unwrap();
//! assert!(json.starts_with(r#"{"state":"RUNNING","diskUsage":"#));
//! ```

use std::fs;
use std::io;
use std::path::Path;

use serde::Serialize;

/// The `kite.systemInfo` result. Serializes with Go's keys and order:
/// `{"state","diskUsage","diskTotal","memoryUsage","totalMemoryLimit","homeDir","uname"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemInfo {
    /// Always `RUNNING`.
    pub state: String,
    /// Used space of the file system holding the home directory, KiB.
    #[serde(rename = "diskUsage")]
    pub disk_usage: u64,
    /// Size of that file system, KiB.
    #[serde(rename = "diskTotal")]
    pub disk_total: u64,
    /// Memory in use, bytes (total − free − buffers − page cache, as Go computes it).
    #[serde(rename = "memoryUsage")]
    pub memory_usage: u64,
    /// Total memory, bytes.
    #[serde(rename = "totalMemoryLimit")]
    pub memory_total: u64,
    /// The user's home directory (`$HOME`).
    #[serde(rename = "homeDir")]
    pub home_dir: String,
    /// The OS name as Go spells it (`linux`, `darwin`, ...).
    pub uname: String,
}

impl SystemInfo {
    /// Collects the figures: memory from `/proc/meminfo`, disk from `statvfs` of the home
    /// directory (`/` when `$HOME` is unset or unusable).
    pub fn collect() -> io::Result<Self> {
        let home_dir = std::env::var("HOME").unwrap_or_default();
        let (memory_usage, memory_total) = memory_stats(&fs::read_to_string("/proc/meminfo")?);
        let disk = if home_dir.is_empty() {
            disk_stats(Path::new("/"))
        } else {
            disk_stats(Path::new(&home_dir)).or_else(|_| disk_stats(Path::new("/")))
        };
        let (disk_usage, disk_total) = disk?;
        Ok(Self {
            state: "RUNNING".to_owned(),
            disk_usage,
            disk_total,
            memory_usage,
            memory_total,
            home_dir,
            uname: uname().to_owned(),
        })
    }
}

fn uname() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// (used, total) bytes from `/proc/meminfo` text; missing lines count as 0.
fn memory_stats(meminfo: &str) -> (u64, u64) {
    let (mut total, mut free, mut buffers, mut cached) = (0u64, 0u64, 0u64, 0u64);
    for line in meminfo.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match name {
            "MemTotal" => &mut total,
            "MemFree" => &mut free,
            "Buffers" => &mut buffers,
            "Cached" => &mut cached,
            _ => continue,
        };
        if let Some(kib) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            *slot = kib.saturating_mul(1024);
        }
    }
    let used = total
        .saturating_sub(free)
        .saturating_sub(buffers.saturating_add(cached));
    (used, total)
}

/// (used, total) KiB of the file system holding `path`.
fn disk_stats(path: &Path) -> io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path)?;
    let block = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    let total = st.f_blocks.saturating_mul(block) / 1024;
    let free = st.f_bfree.saturating_mul(block) / 1024;
    Ok((total.saturating_sub(free), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       16000000 kB\nMemFree:         2000000 kB\nMemAvailable:    9000000 kB\nBuffers:          500000 kB\nCached:          4000000 kB\nSwapCached:        10000 kB\ngarbage\n";
        assert_eq!(memory_stats(text), (9_500_000 * 1024, 16_000_000 * 1024));
        assert_eq!(memory_stats(""), (0, 0));
        assert_eq!(memory_stats("MemTotal: x kB\nMemFree: 5 kB"), (0, 0));
    }

    #[test]
    fn real_figures_are_plausible() {
        let info = SystemInfo::collect().unwrap();
        assert!(info.memory_total > 16 * 1024 * 1024, "{info:?}");
        assert!(
            info.memory_usage > 0 && info.memory_usage < info.memory_total,
            "{info:?}"
        );
        assert!(
            info.disk_total > 0 && info.disk_usage <= info.disk_total,
            "{info:?}"
        );
        assert!(info.disk_usage > 0, "{info:?}");
        assert_eq!(info.uname, "linux");
        let json = serde_json::to_value(&info).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        for k in [
            "state",
            "diskUsage",
            "diskTotal",
            "memoryUsage",
            "totalMemoryLimit",
            "homeDir",
            "uname",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k}");
        }
    }
}
