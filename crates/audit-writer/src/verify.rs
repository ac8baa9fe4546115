//! Proves a tenant's audit chain intact, or names what is wrong with it.

use std::fmt;

use bson::{doc, DateTime, Document};
use futures::TryStreamExt;
use mongodb::Database;

use crate::{canonical, chain_hash, sha256_hex, AUDIT_CHAIN, AUDIT_LOGS, GENESIS};

/// What [`verify`] found for one tenant.
#[derive(Debug, Default)]
pub struct Report {
    pub tenant: String,
    /// Entries read.
    pub entries: u64,
    /// The head's `seq` (the number of entries ever appended), if the tenant has a chain.
    pub head_seq: Option<i64>,
    /// Entries before the first surviving one that left by retention (TTL), not by removal.
    pub expired: i64,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One way the chain is broken. `event_id` names the document concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The stored content no longer hashes to `content_hash`: a field was changed.
    ContentAltered {
        seq: i64,
        event_id: String,
        stored: String,
        recomputed: String,
    },
    /// `hash` does not follow from `prev_hash`, `seq` and `content_hash`: one of them was
    /// changed (or the entry was moved to another position).
    HashAltered { seq: i64, event_id: String },
    /// `prev_hash` is not the previous entry's `hash`: entries were reordered or replaced.
    BrokenLink {
        seq: i64,
        event_id: String,
        expected: String,
        found: String,
    },
    /// Entries `from..=to` are gone (and not by retention).
    Missing { from: i64, to: i64 },
    /// Two documents claim the same position.
    DuplicateSeq { seq: i64, event_id: String },
    /// The head records a different last entry than the one stored.
    HeadMismatch { head_seq: i64, last_seq: i64 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ContentAltered {
                seq,
                event_id,
                stored,
                recomputed,
            } => write!(
                f,
                "seq {seq} (event_id {event_id}): content altered (content_hash {stored}, content hashes to {recomputed})"
            ),
            Problem::HashAltered { seq, event_id } => write!(
                f,
                "seq {seq} (event_id {event_id}): hash does not follow from prev_hash, seq and content_hash"
            ),
            Problem::BrokenLink {
                seq,
                event_id,
                expected,
                found,
            } => write!(
                f,
                "seq {seq} (event_id {event_id}): prev_hash {found} is not the previous entry's hash {expected} (reordered or replaced)"
            ),
            Problem::Missing { from, to } if from == to => write!(f, "seq {from}: entry removed"),
            Problem::Missing { from, to } => write!(f, "seq {from}..={to}: entries removed"),
            Problem::DuplicateSeq { seq, event_id } => {
                write!(f, "seq {seq} (event_id {event_id}): second entry at this position")
            }
            Problem::HeadMismatch { head_seq, last_seq } => write!(
                f,
                "chain head is at seq {head_seq} but the last stored entry is seq {last_seq}"
            ),
        }
    }
}

/// Walks `tenant`'s entries in `seq` order and checks every hash and link, and the head.
/// A gap before the first surviving entry is accepted as retention when that entry records
/// (`prev_expires_at`) that its predecessor had expired by `now`.
pub async fn verify(
    db: &Database,
    tenant: &str,
    now: DateTime,
) -> Result<Report, mongodb::error::Error> {
    let docs: Vec<Document> = db
        .collection::<Document>(AUDIT_LOGS)
        .find(doc! {"tenant_id": tenant})
        .sort(doc! {"seq": 1})
        .await?
        .try_collect()
        .await?;
    let head = db
        .collection::<Document>(AUDIT_CHAIN)
        .find_one(doc! {"_id": tenant})
        .await?;
    let mut report = Report {
        tenant: tenant.to_owned(),
        entries: docs.len() as u64,
        head_seq: head.as_ref().and_then(|h| h.get_i64("seq").ok()),
        ..Report::default()
    };
    let mut prev: Option<(i64, String)> = None;
    for d in &docs {
        let seq = d.get_i64("seq").unwrap_or(0);
        let event_id = d.get_str("event_id").unwrap_or_default().to_owned();
        let content_hash = d.get_str("content_hash").unwrap_or_default();
        let prev_hash = d.get_str("prev_hash").unwrap_or_default();
        let recomputed = sha256_hex(&canonical(d));
        if recomputed != content_hash {
            report.problems.push(Problem::ContentAltered {
                seq,
                event_id: event_id.clone(),
                stored: content_hash.to_owned(),
                recomputed,
            });
        }
        if chain_hash(prev_hash, seq, content_hash) != d.get_str("hash").unwrap_or_default() {
            report.problems.push(Problem::HashAltered {
                seq,
                event_id: event_id.clone(),
            });
        }
        match &prev {
            None => {
                if seq > 1 {
                    let expired = d.get_datetime("prev_expires_at").is_ok_and(|at| *at <= now);
                    if expired {
                        report.expired = seq - 1;
                    } else {
                        report.problems.push(Problem::Missing {
                            from: 1,
                            to: seq - 1,
                        });
                    }
                } else if prev_hash != GENESIS {
                    report.problems.push(Problem::BrokenLink {
                        seq,
                        event_id: event_id.clone(),
                        expected: GENESIS.to_owned(),
                        found: prev_hash.to_owned(),
                    });
                }
            }
            Some((last_seq, last_hash)) => {
                if seq == *last_seq {
                    report.problems.push(Problem::DuplicateSeq {
                        seq,
                        event_id: event_id.clone(),
                    });
                    continue;
                }
                if seq > last_seq + 1 {
                    report.problems.push(Problem::Missing {
                        from: last_seq + 1,
                        to: seq - 1,
                    });
                } else if prev_hash != last_hash {
                    report.problems.push(Problem::BrokenLink {
                        seq,
                        event_id: event_id.clone(),
                        expected: last_hash.clone(),
                        found: prev_hash.to_owned(),
                    });
                }
            }
        }
        prev = Some((seq, d.get_str("hash").unwrap_or_default().to_owned()));
    }
    let last_seq = prev.as_ref().map_or(0, |(s, _)| *s);
    if let Some(head_seq) = report.head_seq {
        if head_seq > last_seq {
            report.problems.push(Problem::Missing {
                from: last_seq + 1,
                to: head_seq,
            });
        } else if head_seq != last_seq
            || head.as_ref().and_then(|h| h.get_str("hash").ok())
                != prev.as_ref().map(|(_, h)| h.as_str())
        {
            report
                .problems
                .push(Problem::HeadMismatch { head_seq, last_seq });
        }
    } else if !docs.is_empty() {
        report.problems.push(Problem::HeadMismatch {
            head_seq: 0,
            last_seq,
        });
    }
    Ok(report)
}

/// Every tenant that has an audit chain.
pub async fn tenants(db: &Database) -> Result<Vec<String>, mongodb::error::Error> {
    let heads: Vec<Document> = db
        .collection::<Document>(AUDIT_CHAIN)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await?
        .try_collect()
        .await?;
    Ok(heads
        .iter()
        .filter_map(|h| h.get_str("_id").ok().map(str::to_owned))
        .collect())
}
