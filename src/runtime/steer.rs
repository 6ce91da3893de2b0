//! Whether the kernel steers each new connection to the io core on the CPU that took its SYN, and why not when it does not.

use std::fmt;
use std::io;

use socket2::Socket;

use super::cpu::{format_cpu_list, online_cpus};
use crate::net::listener;

/// What became of CPU steering at start-up, for the start-up log.
#[derive(Debug)]
pub enum Steering {
    /// Every CPU that can take interrupts runs an io core: each connection is
    /// accepted on the CPU whose softirq took its SYN.
    On,
    /// Steered, but these online CPUs run no io core: a SYN taken there is
    /// given to a listener by hash, as without steering.
    Partial {
        uncovered: Vec<usize>,
        cores: Vec<usize>,
    },
    /// `--steer off`: the kernel spreads connections by hash.
    Off,
    /// Asked for, but not possible here; listeners spread by hash.
    Refused(io::Error),
}

impl Steering {
    /// Attaches the steering program to `listeners` (core `i` on `cpus[i]`) if `wanted`.
    pub fn apply(listeners: &[Socket], cpus: &[usize], wanted: bool) -> Self {
        if !wanted {
            return Self::Off;
        }
        if let Err(error) = listener::steer_by_cpu(listeners, cpus) {
            return Self::Refused(error);
        }
        let uncovered: Vec<usize> = online_cpus()
            .into_iter()
            .filter(|cpu| !cpus.contains(cpu))
            .collect();
        if uncovered.is_empty() {
            Self::On
        } else {
            Self::Partial {
                uncovered,
                cores: cpus.to_vec(),
            }
        }
    }

    /// Whether the steering program is attached.
    pub fn is_on(&self) -> bool {
        matches!(self, Self::On | Self::Partial { .. })
    }
}

impl fmt::Display for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::On => write!(
                f,
                "steering: on; each connection is accepted by the io core on the CPU that took its SYN"
            ),
            Self::Partial { uncovered, cores } => write!(
                f,
                "steering: on; {} {} {} no io core, so a connection whose SYN lands there is spread by hash as without steering (point the NIC's interrupts at the io cores' CPUs, {}, to keep every connection local: tuning/apply --cpus {})",
                if uncovered.len() == 1 { "CPU" } else { "CPUs" },
                format_cpu_list(uncovered),
                if uncovered.len() == 1 { "runs" } else { "run" },
                format_cpu_list(cores),
                format_cpu_list(cores)
            ),
            Self::Off => write!(f, "steering: off (--steer off); the kernel spreads connections by hash"),
            Self::Refused(error) => write!(
                f,
                "steering: off, not possible here ({error}); the kernel spreads connections by hash"
            ),
        }
    }
}
