//! Released answers and the privacy ledger.
//!
//! An answer is kept under its release key (what was asked, of which
//! data), so the same question is answered again with the same noise. A
//! new release spends privacy loss (rho, in billionths) from every
//! agreement it draws on, in the same transaction that keeps the answer and
//! audits it: a release that would take any agreement past its budget is
//! not made, and two gateways racing on one key store one answer.

use sqlx::Row;

use super::{Storage, StorageError, append_audit_in, count, to_i64};
use crate::audit::record::AuditRecord;

/// A release about to be made.
pub struct NewRelease<'a> {
    pub key: &'a str,
    pub actor: &'a str,
    /// Rho, in billionths.
    pub cost_nano: u64,
    /// Each agreement charged and its budget (rho, in billionths).
    pub budgets: &'a [(String, u64)],
    /// The encoded answer.
    pub answer: &'a [u8],
    pub audit: &'a AuditRecord,
}

/// What became of a release.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Kept, charged and audited.
    Made,
    /// The same release was made first (by another gateway): its answer.
    Existing(Vec<u8>),
    /// It would take this agreement past its budget: (agreement, spent).
    OverBudget(String, u64),
}

impl Storage {
    /// The answer kept under `key`, if any.
    pub async fn release(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let row = sqlx::query("SELECT answer FROM releases WHERE release_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("answer")?),
            None => None,
        })
    }

    /// Rho (in billionths) spent under `agreement`.
    pub async fn privacy_spent(&self, agreement: &str) -> Result<u64, StorageError> {
        let row = sqlx::query("SELECT spent_nano FROM privacy_spent WHERE agreement_id = $1")
            .bind(agreement)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => count(&row, "spent_nano")?,
            None => 0,
        })
    }

    /// Keeps, charges and audits a release, all or nothing.
    pub async fn record_release(&self, release: &NewRelease<'_>) -> Result<Recorded, StorageError> {
        let _writing = match &self.write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut tx = self.pool.begin().await?;
        let kept = sqlx::query(
            "INSERT INTO releases (release_key, at_ms, actor, cost_nano, answer) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (release_key) DO NOTHING",
        )
        .bind(release.key)
        .bind((time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
        .bind(release.actor)
        .bind(to_i64(release.cost_nano))
        .bind(release.answer)
        .execute(&mut *tx)
        .await?;
        if kept.rows_affected() == 0 {
            tx.rollback().await?;
            drop(_writing);
            return Ok(match self.release(release.key).await? {
                Some(answer) => Recorded::Existing(answer),
                None => Recorded::Existing(release.answer.to_vec()),
            });
        }
        for (agreement, budget) in release.budgets {
            sqlx::query(
                "INSERT INTO privacy_spent (agreement_id, spent_nano) VALUES ($1, 0) \
                 ON CONFLICT (agreement_id) DO NOTHING",
            )
            .bind(agreement)
            .execute(&mut *tx)
            .await?;
            let charged = sqlx::query(
                "UPDATE privacy_spent SET spent_nano = spent_nano + $2 \
                 WHERE agreement_id = $1 AND spent_nano + $2 <= $3",
            )
            .bind(agreement)
            .bind(to_i64(release.cost_nano))
            .bind(to_i64(*budget))
            .execute(&mut *tx)
            .await?;
            if charged.rows_affected() == 0 {
                tx.rollback().await?;
                drop(_writing);
                let spent = self.privacy_spent(agreement).await?;
                return Ok(Recorded::OverBudget(agreement.clone(), spent));
            }
        }
        append_audit_in(&mut tx, release.audit).await?;
        tx.commit().await?;
        Ok(Recorded::Made)
    }
}
