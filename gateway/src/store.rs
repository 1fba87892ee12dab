//! The usage store: one record per request (never its content), and per-day totals per instance.
//!
//! SQLite on the gateway's volume is the embedded default (one replica); PostgreSQL when several
//! replicas share one store. Both go through sqlx's `Any` driver, so every query below is the one
//! query layer for both: portable SQL, `$n` parameters (SQLite reads them positionally), BIGINT
//! and TEXT only, sums cast to BIGINT (PostgreSQL's SUM of BIGINT is NUMERIC).
//!
//! Records are kept 90 days (the promise "API call records: retained for 90 days for billing and
//! reconciliation") and then purged. The daily totals are billing records and are kept.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

/// How long request records are kept.
pub const RECORD_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// One answered request of a known instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub request_id: String,
    /// Milliseconds since the Unix epoch, by the injected clock.
    pub at_ms: i64,
    pub tenant: String,
    pub namespace: String,
    pub instance: String,
    pub instance_uid: String,
    /// The first 12 hex digits of the key's hash.
    pub key_id: String,
    pub model: String,
    pub endpoint: String,
    pub status: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms: i64,
}

/// An instance's totals over every day recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The latest request's time (milliseconds since the epoch; 0: none).
    pub last_ms: i64,
}

/// A tenant's use of one instance on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daily {
    pub day: String,
    pub instance: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

const RECORD_COLUMNS: &str = "request_id, at_ms, tenant, namespace, instance, instance_uid, \
    key_id, model, endpoint, status, prompt_tokens, completion_tokens, latency_ms";

type RecordRow =
    (String, i64, String, String, String, String, String, String, String, i64, i64, i64, i64);

fn record(r: RecordRow) -> Record {
    Record {
        request_id: r.0,
        at_ms: r.1,
        tenant: r.2,
        namespace: r.3,
        instance: r.4,
        instance_uid: r.5,
        key_id: r.6,
        model: r.7,
        endpoint: r.8,
        status: r.9,
        prompt_tokens: r.10,
        completion_tokens: r.11,
        latency_ms: r.12,
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS usage_records (
        request_id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        tenant TEXT NOT NULL,
        namespace TEXT NOT NULL,
        instance TEXT NOT NULL,
        instance_uid TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        status BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        latency_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS usage_records_at ON usage_records (at_ms)",
    "CREATE INDEX IF NOT EXISTS usage_records_instance ON usage_records (namespace, instance, at_ms)",
    "CREATE TABLE IF NOT EXISTS usage_daily (
        day TEXT NOT NULL,
        instance_uid TEXT NOT NULL,
        tenant TEXT NOT NULL,
        namespace TEXT NOT NULL,
        instance TEXT NOT NULL,
        requests BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        last_ms BIGINT NOT NULL,
        PRIMARY KEY (day, instance_uid))",
];

const INSERT: &str = "INSERT INTO usage_records (request_id, at_ms, tenant, namespace, instance,
    instance_uid, key_id, model, endpoint, status, prompt_tokens, completion_tokens, latency_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
    ON CONFLICT (request_id) DO NOTHING";

const ADD_TO_DAY: &str = "INSERT INTO usage_daily (day, instance_uid, tenant, namespace, instance,
    requests, prompt_tokens, completion_tokens, last_ms) VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8)
    ON CONFLICT (day, instance_uid) DO UPDATE SET
        requests = usage_daily.requests + 1,
        prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens,
        last_ms = CASE WHEN excluded.last_ms > usage_daily.last_ms
                       THEN excluded.last_ms ELSE usage_daily.last_ms END";

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

/// A pool on `dsn` with `schema` created: `sqlite:///path/file.db` (made if missing; WAL, so
/// readers do not block the writer), `sqlite::memory:` (one connection: each would have its own
/// database), or `postgres://user:password@host:port/db`. Replicas starting together may race to
/// create the file or the tables; the loser tries again. Errors never repeat the DSN's password.
/// The dashboard's store opens the same way.
pub async fn connect(dsn: &str, schema: &[&str]) -> Result<AnyPool, String> {
    sqlx::any::install_default_drivers();
    let sqlite = dsn.starts_with("sqlite:");
    let memory = dsn.contains(":memory:");
    let dsn = if sqlite && !memory && !dsn.contains("mode=") {
        format!("{dsn}{}mode=rwc", if dsn.contains('?') { '&' } else { '?' })
    } else {
        dsn.to_string()
    };
    let connections = if memory {
        1
    } else if sqlite {
        2
    } else {
        8
    };
    let failed = |e: sqlx::Error| redact(&e.to_string(), &dsn);
    // The whole opening is retried, not only the tables: of several openers of a new SQLite
    // file, one may be told "database is locked" at once, not after the busy timeout (seen in
    // CI, and in the test below).
    let mut attempt = 0;
    loop {
        let opened: Result<AnyPool, sqlx::Error> = async {
            let pool = AnyPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(10))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        // With WAL, a commit survives the process's death without a disk sync
                        // (only a power loss may take the last ones back). Answers wait for
                        // their record's commit: one sync each cost 0.5 ms a request.
                        if sqlite && !memory {
                            sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous=NORMAL")
                                .await?;
                        }
                        Ok(())
                    })
                })
                .connect(&dsn)
                .await?;
            if sqlite && !memory {
                sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
            }
            for ddl in schema {
                sqlx::query(ddl).execute(&pool).await?;
            }
            Ok(pool)
        }
        .await;
        match opened {
            Ok(pool) => return Ok(pool),
            Err(e) if attempt < 4 => {
                tracing::debug!(error = %failed(e), "opening the store; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(failed(e)),
        }
    }
}

/// `YYYY-MM-DD` (UTC) of an instant in milliseconds.
fn day_of(at_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(at_ms)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| "1970-01-01".into())
}

impl Store {
    /// Opens (and creates, for SQLite) the store at `dsn`: `sqlite:///path/usage.db` or
    /// `postgres://user:password@host:port/db`.
    pub async fn open(dsn: &str) -> anyhow::Result<Store> {
        let pool = connect(dsn, SCHEMA).await.map_err(|e| anyhow::anyhow!("usage store: {e}"))?;
        Ok(Store { pool })
    }

    /// Writes records and adds them to their days, all or nothing.
    pub async fn insert(&self, records: &[Record]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for r in records {
            let inserted = sqlx::query(INSERT)
                .bind(&r.request_id)
                .bind(r.at_ms)
                .bind(&r.tenant)
                .bind(&r.namespace)
                .bind(&r.instance)
                .bind(&r.instance_uid)
                .bind(&r.key_id)
                .bind(&r.model)
                .bind(&r.endpoint)
                .bind(r.status)
                .bind(r.prompt_tokens)
                .bind(r.completion_tokens)
                .bind(r.latency_ms)
                .execute(&mut *tx)
                .await?;
            // A retried batch adds nothing twice.
            if inserted.rows_affected() == 0 {
                continue;
            }
            sqlx::query(ADD_TO_DAY)
                .bind(day_of(r.at_ms))
                .bind(&r.instance_uid)
                .bind(&r.tenant)
                .bind(&r.namespace)
                .bind(&r.instance)
                .bind(r.prompt_tokens)
                .bind(r.completion_tokens)
                .bind(r.at_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Deletes the records older than the retention at `now_ms`; how many.
    pub async fn purge(&self, now_ms: i64) -> Result<u64, sqlx::Error> {
        let cutoff = now_ms - RECORD_RETENTION.as_millis() as i64;
        let done = sqlx::query("DELETE FROM usage_records WHERE at_ms < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// An instance's records, newest first.
    pub async fn records(
        &self,
        namespace: &str,
        instance: &str,
        limit: i64,
    ) -> Result<Vec<Record>, sqlx::Error> {
        let rows: Vec<RecordRow> = sqlx::query_as(&format!(
            "SELECT {RECORD_COLUMNS} FROM usage_records WHERE namespace = $1 AND instance = $2
             ORDER BY at_ms DESC, request_id LIMIT $3"
        ))
        .bind(namespace)
        .bind(instance)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(record).collect())
    }

    /// A tenant's records made before `before_ms`, newest first, of one instance when named
    /// (the dashboard's request log pages backwards with it).
    pub async fn tenant_records(
        &self,
        tenant: &str,
        instance: Option<&str>,
        before_ms: i64,
        limit: i64,
    ) -> Result<Vec<Record>, sqlx::Error> {
        let rows: Vec<RecordRow> = sqlx::query_as(&format!(
            "SELECT {RECORD_COLUMNS} FROM usage_records
             WHERE tenant = $1 AND ($2 = '' OR instance = $2) AND at_ms < $3
             ORDER BY at_ms DESC, request_id LIMIT $4"
        ))
        .bind(tenant)
        .bind(instance.unwrap_or_default())
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(record).collect())
    }

    /// A tenant's requests and tokens per day (UTC, `YYYY-MM-DD`) and instance from `since_day`
    /// on, oldest first. Kept beyond the records' 90 days: they are billing records.
    pub async fn daily(&self, tenant: &str, since_day: &str) -> Result<Vec<Daily>, sqlx::Error> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT day, instance, requests, prompt_tokens, completion_tokens FROM usage_daily
             WHERE tenant = $1 AND day >= $2 ORDER BY day, instance",
        )
        .bind(tenant)
        .bind(since_day)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Daily {
                day: r.0,
                instance: r.1,
                requests: r.2,
                prompt_tokens: r.3,
                completion_tokens: r.4,
            })
            .collect())
    }

    /// An instance's totals over all its days (what token billing is computed from).
    pub async fn totals(&self, instance_uid: &str) -> Result<Totals, sqlx::Error> {
        let (requests, prompt_tokens, completion_tokens, last_ms): (i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT),
                        CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT),
                        CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT),
                        CAST(COALESCE(MAX(last_ms), 0) AS BIGINT)
                 FROM usage_daily WHERE instance_uid = $1",
            )
            .bind(instance_uid)
            .fetch_one(&self.pool)
            .await?;
        Ok(Totals { requests, prompt_tokens, completion_tokens, last_ms })
    }
}

/// The DSN's password never reaches a log line.
fn redact(message: &str, dsn: &str) -> String {
    match dsn.split_once("://").and_then(|(_, rest)| rest.split_once('@')) {
        Some((userinfo, _)) => match userinfo.split_once(':') {
            Some((_, password)) if !password.is_empty() => message.replace(password, "***"),
            _ => message.to_string(),
        },
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn record(id: &str, at_ms: i64, prompt: i64, completion: i64) -> Record {
        Record {
            request_id: id.into(),
            at_ms,
            tenant: "acme".into(),
            namespace: "tenant-acme".into(),
            instance: "bot".into(),
            instance_uid: "uid-1".into(),
            key_id: "0123456789ab".into(),
            model: "bot".into(),
            endpoint: "chat/completions".into(),
            status: 200,
            prompt_tokens: prompt,
            completion_tokens: completion,
            latency_ms: 12,
        }
    }

    /// The same assertions for both databases: what one replica writes, another reads.
    async fn records_days_and_the_purge(dsn: &str) {
        let (store, other) = tokio::join!(Store::open(dsn), Store::open(dsn));
        let (store, other) = (store.unwrap(), other.unwrap());
        let day = 86_400_000;
        let t0 = 1_800_000_000_000;
        store
            .insert(&[
                record("a", t0, 3, 4),
                record("b", t0 + 1, 5, 6),
                record("c", t0 + day, 1, 1),
            ])
            .await
            .unwrap();
        // A retried batch changes nothing.
        other.insert(&[record("a", t0, 3, 4)]).await.unwrap();
        let all = other.records("tenant-acme", "bot", 10).await.unwrap();
        assert_eq!(all.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(), ["c", "b", "a"]);
        assert_eq!(all[2], record("a", t0, 3, 4));
        let totals =
            Totals { requests: 3, prompt_tokens: 9, completion_tokens: 11, last_ms: t0 + day };
        assert_eq!(other.totals("uid-1").await.unwrap(), totals);
        assert_eq!(store.totals("other").await.unwrap(), Totals::default());
        // The tenant's log pages backwards; a filter on another instance finds nothing.
        let page = other.tenant_records("acme", None, t0 + day, 10).await.unwrap();
        assert_eq!(page.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert!(other.tenant_records("acme", Some("else"), i64::MAX, 10).await.unwrap().is_empty());
        assert!(other.tenant_records("globex", None, i64::MAX, 10).await.unwrap().is_empty());
        let days = other.daily("acme", "1970-01-01").await.unwrap();
        assert_eq!(days.len(), 2, "{days:?}");
        assert_eq!(
            (days[0].requests, days[0].prompt_tokens, days[0].completion_tokens),
            (2, 8, 10)
        );
        assert_eq!(days[1].instance, "bot");
        // At 90 days after t0 plus a day, the first day's records go; the totals stay.
        let purged = store.purge(t0 + RECORD_RETENTION.as_millis() as i64 + 10).await.unwrap();
        assert_eq!(purged, 2);
        assert_eq!(other.records("tenant-acme", "bot", 10).await.unwrap().len(), 1);
        assert_eq!(store.totals("uid-1").await.unwrap(), totals, "billing totals are kept");
        // Reopening finds the same store.
        drop((store, other));
        let again = Store::open(dsn).await.unwrap();
        assert_eq!(again.totals("uid-1").await.unwrap(), totals);
    }

    #[tokio::test]
    async fn sqlite_keeps_records_and_totals() {
        let dir = tempfile::tempdir().unwrap();
        records_days_and_the_purge(&format!("sqlite://{}", dir.path().join("usage.db").display()))
            .await;
    }

    /// Replicas (or the gateway and the dashboard) starting together on a new SQLite file all
    /// open it: once CI saw one of two openers fail with "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openers_racing_on_a_new_sqlite_file_all_open() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..10 {
            let dsn = format!("sqlite://{}", dir.path().join(format!("{round}.db")).display());
            let opens = (0..6).map(|_| {
                let dsn = dsn.clone();
                tokio::spawn(async move { Store::open(&dsn).await.map(drop) })
            });
            for opened in futures::future::join_all(opens).await {
                opened.unwrap().unwrap();
            }
        }
    }

    #[tokio::test]
    async fn postgresql_keeps_records_and_totals() {
        let pg = alcove_testkit::postgres::Postgres::start();
        records_days_and_the_purge(&pg.dsn).await;
    }

    #[test]
    fn a_dsn_password_is_redacted() {
        assert_eq!(
            redact("cannot connect to postgres://u:s3cret@db/x", "postgres://u:s3cret@db/x"),
            "cannot connect to postgres://u:***@db/x"
        );
        assert_eq!(redact("no such file", "sqlite:///x.db"), "no such file");
    }
}
