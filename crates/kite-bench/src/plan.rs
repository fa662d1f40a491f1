//! What a run measures: sizes and durations chosen by `--quick`, `--smoke` and overrides.

use std::time::Duration;

use crate::stats::Load;

/// Callers and how many connections they use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub callers: usize,
    /// All callers on one connection (else one connection each).
    pub shared: bool,
}

impl Shape {
    pub fn connections(&self) -> usize {
        if self.shared {
            1
        } else {
            self.callers
        }
    }
}

/// Kontrol storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    Embedded,
    Postgres,
    Etcd,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Postgres => "PostgreSQL",
            Backend::Etcd => "etcd",
        }
    }
}

/// Everything a run measures.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub mode: &'static str,
    /// The load of one round; every throughput row is measured in `rounds` rounds,
    /// interleaved with the rows it is compared with.
    pub load: Load,
    pub rounds: usize,
    pub shapes: Vec<Shape>,
    /// XHR polling is measured at this many callers.
    pub xhr_callers: usize,
    pub ceiling: bool,
    pub wires: Vec<crate::rpc::Wire>,
    /// Credentials of the `auth` table.
    pub credentials: Vec<crate::rpc::AuthMode>,
    /// Clients of the `balanced` table.
    pub clients: Vec<crate::balanced::ClientKind>,
    pub connections: Vec<usize>,
    pub kites: Vec<usize>,
    pub queries: usize,
    pub backends: Vec<Backend>,
}

/// Command-line overrides.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub quick: bool,
    pub smoke: bool,
    pub duration: Option<f64>,
    pub warmup: Option<f64>,
    pub calls: Option<u64>,
    pub rounds: Option<usize>,
    pub callers: Option<Vec<usize>>,
    pub sharing: Option<Sharing>,
    pub wires: Option<Vec<crate::rpc::Wire>>,
    pub no_ceiling: bool,
    pub credentials: Option<Vec<crate::rpc::AuthMode>>,
    pub clients: Option<Vec<crate::balanced::ClientKind>>,
    pub connections: Option<Vec<usize>>,
    pub kites: Option<Vec<usize>>,
    pub queries: Option<usize>,
    pub backends: Option<Vec<Backend>>,
}

/// Which connection layouts to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Sharing {
    Shared,
    PerCaller,
    Both,
}

impl Plan {
    pub fn new(o: &Overrides) -> Plan {
        use crate::rpc::Wire;
        let (mode, rounds, warmup, measure) = if o.smoke {
            ("smoke", 1, 0.0, 0.0)
        } else if o.quick {
            ("quick", 2, 0.1, 0.6)
        } else {
            ("full", 4, 0.25, 4.0)
        };
        let callers = if o.smoke { vec![1, 4] } else { vec![1, 8, 64] };
        let (connections, kites, queries) = if o.smoke {
            (vec![20], vec![200], 50)
        } else if o.quick {
            (vec![1000], vec![10_000], 500)
        } else {
            (vec![1000, 5000], vec![10_000, 100_000], 2000)
        };
        let rounds = o.rounds.unwrap_or(rounds).max(1);
        let warmup = o.warmup.unwrap_or(warmup);
        // --duration is the measured time of a row, over all its rounds.
        let measure = o.duration.unwrap_or(measure) / rounds as f64;
        let load = if let Some(n) = o.calls {
            Load::Calls(n)
        } else if o.smoke && o.duration.is_none() {
            Load::Calls(60)
        } else {
            Load::Timed {
                warmup: Duration::from_secs_f64(warmup.max(0.0)),
                measure: Duration::from_secs_f64(measure.max(0.05)),
            }
        };
        let callers = o.callers.clone().unwrap_or(callers);
        let sharing = o.sharing.unwrap_or(Sharing::Both);
        let mut shapes = Vec::new();
        for &n in &callers {
            if n == 1 {
                shapes.push(Shape {
                    callers: 1,
                    shared: true,
                });
                continue;
            }
            if sharing != Sharing::PerCaller {
                shapes.push(Shape {
                    callers: n,
                    shared: true,
                });
            }
            if sharing != Sharing::Shared {
                shapes.push(Shape {
                    callers: n,
                    shared: false,
                });
            }
        }
        // XHR polling at the middle caller count (8; 4 in smoke runs).
        let xhr_callers = callers.get(1).copied().unwrap_or(8);
        Plan {
            mode,
            load,
            rounds: if matches!(load, Load::Calls(_)) {
                1
            } else {
                rounds
            },
            shapes,
            xhr_callers,
            ceiling: !o.no_ceiling,
            wires: o
                .wires
                .clone()
                .unwrap_or_else(|| vec![Wire::SockJsWs, Wire::RawWs, Wire::RawDnode, Wire::Xhr]),
            credentials: o.credentials.clone().unwrap_or_else(|| {
                use crate::rpc::AuthMode;
                vec![AuthMode::None, AuthMode::Token, AuthMode::KiteKey]
            }),
            clients: o.clients.clone().unwrap_or_else(|| {
                use crate::balanced::ClientKind;
                vec![
                    ClientKind::Direct,
                    ClientKind::Governed,
                    ClientKind::P2c,
                    ClientKind::RoundRobin,
                ]
            }),
            connections: o.connections.clone().unwrap_or(connections),
            kites: o.kites.clone().unwrap_or(kites),
            queries: o.queries.unwrap_or(queries),
            backends: o
                .backends
                .clone()
                .unwrap_or_else(|| vec![Backend::Embedded, Backend::Postgres, Backend::Etcd]),
        }
    }

    pub fn describe_load(&self) -> String {
        match self.load {
            Load::Timed { warmup, measure } => format!(
                "Each row: {} round(s) of {:.2} s warm-up + {:.2} s measured ({:.1} s measured in all), rows compared with each other measured in turn within each round",
                self.rounds,
                warmup.as_secs_f64(),
                measure.as_secs_f64(),
                measure.as_secs_f64() * self.rounds as f64
            ),
            Load::Calls(n) => format!("{n} calls per row"),
        }
    }
}
