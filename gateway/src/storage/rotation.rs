//! A key rotation's storage side (`crate::rotation`): where each stored
//! record came from and whose it is, and what a store built under new keys
//! takes over from the store it replaces.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sqlx::Row;

use super::{Storage, StorageError, append_audit_in, count, to_i64};
use crate::audit::record::{AuditEvent, AuditRecord};
use crate::rotation::RecordOrigin;

/// What a rotated store takes over: nothing that names or links a person.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakenOver {
    /// Privacy loss (rho, in billionths) already spent, by agreement id:
    /// a rotation must never give an analyst a fresh budget.
    pub privacy_spent: BTreeMap<String, u64>,
    /// The fitted linkage models: re-linking under them, the new store's
    /// people are the old store's, whatever the keys (a model fitted
    /// afresh moves borderline pairs).
    pub models: Vec<TakenModel>,
}

/// One fitted linkage model, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenModel {
    pub params_version: u32,
    pub model: String,
    pub quality: Option<String>,
    pub entities: u64,
}

impl Storage {
    /// Every stored record's origin (organisation, dataset, source row)
    /// with its person on the spine: what [`crate::rotation::compare`]
    /// compares between two stores.
    pub async fn record_people(&self) -> Result<Vec<(RecordOrigin, String)>, StorageError> {
        let mut rows = sqlx::query(
            "SELECT DISTINCT r.organisation, r.dataset, r.source_row, \
             COALESCE(s.spine_id, r.person_id) FROM records r \
             LEFT JOIN person_spine s ON s.person_id = r.person_id",
        )
        .fetch(&self.pool);
        let mut people = Vec::new();
        while let Some(row) = rows.try_next().await? {
            people.push((
                RecordOrigin {
                    organisation: row.try_get(0)?,
                    dataset: row.try_get(1)?,
                    source_row: row.try_get(2)?,
                },
                row.try_get(3)?,
            ));
        }
        Ok(people)
    }

    /// What a store replacing this one takes over.
    pub async fn to_take_over(&self) -> Result<TakenOver, StorageError> {
        let mut taken = TakenOver::default();
        for row in sqlx::query("SELECT agreement_id, spent_nano FROM privacy_spent")
            .fetch_all(&self.pool)
            .await?
        {
            taken
                .privacy_spent
                .insert(row.try_get("agreement_id")?, count(&row, "spent_nano")?);
        }
        for row in sqlx::query(
            "SELECT params_version, model, quality, entities FROM linkage_models ORDER BY params_version",
        )
        .fetch_all(&self.pool)
        .await?
        {
            taken.models.push(TakenModel {
                params_version: u32::try_from(row.try_get::<i64, _>("params_version")?)
                    .unwrap_or_default(),
                model: row.try_get("model")?,
                quality: row.try_get("quality")?,
                entities: count(&row, "entities")?,
            });
        }
        Ok(taken)
    }

    /// Takes over `taken` from the store this one replaces, audited, all or
    /// nothing; only while this store has released nothing, so no privacy
    /// loss is counted twice or lost. Its own fitted models are replaced.
    pub async fn take_over(&self, taken: &TakenOver) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        let released: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM releases")
            .fetch_one(&mut *tx)
            .await?;
        let agreements: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM privacy_spent")
            .fetch_one(&mut *tx)
            .await?;
        if released > 0 || agreements > 0 {
            return Err(StorageError::AlreadyAnswered {
                released,
                agreements,
            });
        }
        for (agreement, spent) in &taken.privacy_spent {
            sqlx::query("INSERT INTO privacy_spent (agreement_id, spent_nano) VALUES ($1, $2)")
                .bind(agreement)
                .bind(to_i64(*spent))
                .execute(&mut *tx)
                .await?;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for m in &taken.models {
            super::linkage::save_model(
                &mut tx,
                m.params_version,
                &m.model,
                m.quality.as_deref(),
                m.entities,
                now,
            )
            .await?;
        }
        // What a gateway kept of this store's runs was found under the
        // models replaced.
        sqlx::query("UPDATE linkage_models SET runs = runs + 1")
            .execute(&mut *tx)
            .await?;
        let event = AuditEvent::TookOver {
            privacy_spent_nano: taken.privacy_spent.clone(),
            linkage_models: taken.models.iter().map(|m| m.params_version).collect(),
        };
        append_audit_in(&mut tx, &AuditRecord::new("gateway", None, &event)).await?;
        tx.commit().await?;
        Ok(())
    }
}
