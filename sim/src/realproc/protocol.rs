//! The child's side of the conversation: one line per step on stdout, flushed before the
//! child goes on.

use receipt_store::Error;
use std::fmt;

/// What an error returned to the child was, as far as the parent's checks care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NonMonotonic,
    Sealed,
    InvalidInput,
    ZeroMaxBlocksPerFile,
    Poisoned,
    Closed,
    Other,
}

const ERROR_KINDS: [(ErrorKind, &str); 7] = [
    (ErrorKind::NonMonotonic, "non_monotonic"),
    (ErrorKind::Sealed, "sealed"),
    (ErrorKind::InvalidInput, "invalid_input"),
    (ErrorKind::ZeroMaxBlocksPerFile, "zero_max_blocks_per_file"),
    (ErrorKind::Poisoned, "poisoned"),
    (ErrorKind::Closed, "closed"),
    (ErrorKind::Other, "other"),
];

impl ErrorKind {
    pub fn of(e: &Error) -> Self {
        match e {
            Error::NonMonotonic { .. } => ErrorKind::NonMonotonic,
            Error::Sealed { .. } => ErrorKind::Sealed,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::ZeroMaxBlocksPerFile => ErrorKind::ZeroMaxBlocksPerFile,
            Error::Poisoned(_) => ErrorKind::Poisoned,
            Error::Closed | Error::Crashed => ErrorKind::Closed,
            _ => ErrorKind::Other,
        }
    }

    pub fn tag(self) -> &'static str {
        ERROR_KINDS
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, t)| *t)
            .expect("every kind has a tag")
    }

    fn from_tag(tag: &str) -> Option<Self> {
        ERROR_KINDS.iter().find(|(_, t)| *t == tag).map(|(k, _)| *k)
    }
}

/// One line the child prints on stdout (and flushes) as it goes. A line the parent reads
/// describes something that happened before the kill; what happened after the last line is
/// unknown, which the model already allows for (an issued write may or may not be durable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// The store opened: recovery is done.
    Opened,
    /// Op `i` of the plan is about to be called.
    Issued(usize),
    /// Write op `i` returned `Ok`: it is acknowledged.
    Ack(usize),
    /// Op `i` (not a write) returned `Ok`.
    Done(usize),
    /// Op `i` returned an error.
    Failed {
        op: usize,
        kind: ErrorKind,
        detail: String,
    },
    /// Explicit prune op `i` removed these windows and left no deletion pending: the removals
    /// are durable and the windows must never come back.
    Pruned {
        op: usize,
        /// (start, end exclusive) of each window whose deletion was made durable.
        windows: Vec<(u64, u64)>,
    },
    /// The child is about to close the store cleanly; the next child starts at `next_op`.
    Closing {
        next_op: usize,
    },
    /// The store closed cleanly; the child exits 0.
    Closed {
        next_op: usize,
    },
    CloseFailed {
        next_op: usize,
        detail: String,
    },
    OpenFailed(String),
}

/// Error texts travel on one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Opened => write!(f, "opened"),
            Msg::Issued(i) => write!(f, "issued {i}"),
            Msg::Ack(i) => write!(f, "ack {i}"),
            Msg::Done(i) => write!(f, "done {i}"),
            Msg::Failed { op, kind, detail } => {
                write!(f, "failed {op} {} {}", kind.tag(), one_line(detail))
            }
            Msg::Pruned { op, windows } => {
                write!(f, "pruned {op}")?;
                for (s, e) in windows {
                    write!(f, " {s}-{e}")?;
                }
                Ok(())
            }
            Msg::Closing { next_op } => write!(f, "closing {next_op}"),
            Msg::Closed { next_op } => write!(f, "closed {next_op}"),
            Msg::CloseFailed { next_op, detail } => {
                write!(f, "close_failed {next_op} {}", one_line(detail))
            }
            Msg::OpenFailed(detail) => write!(f, "open_failed {}", one_line(detail)),
        }
    }
}

impl Msg {
    pub fn parse(line: &str) -> Option<Msg> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let num = |s: &str| s.parse::<usize>().ok();
        // `<number> <text>`, the text possibly empty.
        let num_text = |s: &str| {
            let (n, t) = s.split_once(' ').unwrap_or((s, ""));
            Some((num(n)?, t.to_string()))
        };
        Some(match word {
            "opened" if rest.is_empty() => Msg::Opened,
            "issued" => Msg::Issued(num(rest)?),
            "ack" => Msg::Ack(num(rest)?),
            "done" => Msg::Done(num(rest)?),
            "failed" => {
                let (op, t) = num_text(rest)?;
                let (tag, detail) = t.split_once(' ').unwrap_or((&t, ""));
                Msg::Failed {
                    op,
                    kind: ErrorKind::from_tag(tag)?,
                    detail: detail.to_string(),
                }
            }
            "pruned" => {
                let mut it = rest.split(' ');
                let op = num(it.next()?)?;
                let windows = it
                    .map(|w| {
                        let (s, e) = w.split_once('-')?;
                        Some((s.parse().ok()?, e.parse().ok()?))
                    })
                    .collect::<Option<Vec<(u64, u64)>>>()?;
                Msg::Pruned { op, windows }
            }
            "closing" => Msg::Closing {
                next_op: num(rest)?,
            },
            "closed" => Msg::Closed {
                next_op: num(rest)?,
            },
            "close_failed" => {
                let (next_op, detail) = num_text(rest)?;
                Msg::CloseFailed { next_op, detail }
            }
            "open_failed" => Msg::OpenFailed(rest.to_string()),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_line_round_trips_through_its_text() {
        let msgs = [
            Msg::Opened,
            Msg::Issued(3),
            Msg::Ack(3),
            Msg::Done(4),
            Msg::Failed {
                op: 5,
                kind: ErrorKind::Sealed,
                detail: "non-monotonic write: height 2".into(),
            },
            Msg::Failed {
                op: 6,
                kind: ErrorKind::Other,
                detail: String::new(),
            },
            Msg::Pruned {
                op: 7,
                windows: vec![(0, 16), (16, 32)],
            },
            Msg::Pruned {
                op: 8,
                windows: vec![],
            },
            Msg::Closing { next_op: 80 },
            Msg::Closed { next_op: 80 },
            Msg::CloseFailed {
                next_op: 9,
                detail: "io error".into(),
            },
            Msg::OpenFailed("wal corrupt: x at offset 3".into()),
        ];
        for m in msgs {
            assert_eq!(Msg::parse(&m.to_string()), Some(m.clone()), "{m}");
        }
        for kind in ERROR_KINDS.map(|(k, _)| k) {
            assert_eq!(ErrorKind::from_tag(kind.tag()), Some(kind));
        }
    }

    #[test]
    fn a_multi_line_error_stays_on_one_protocol_line() {
        let m = Msg::OpenFailed("a\nb".into());
        assert_eq!(m.to_string().lines().count(), 1);
    }

    #[test]
    fn garbage_is_not_a_protocol_line() {
        for l in [
            "",
            "ack",
            "ack x",
            "failed 3 bogus x",
            "pruned",
            "opened 1",
            "thread 'main' panicked",
        ] {
            assert_eq!(Msg::parse(l), None, "{l:?}");
        }
    }
}
