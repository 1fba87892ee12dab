//! What every replica must share: the codes waiting to be entered, the sessions, the counts
//! behind the limits on asking for codes, the top-up forms already paid, and each tenant's
//! standing its owners were last told about. SQLite on a volume (one replica) or PostgreSQL
//! (several), opened as the gateway's usage store is (its `connect`), through sqlx's `Any`
//! driver: portable SQL, `$n` parameters, BIGINT and TEXT only.
//!
//! Nothing secret is stored in a usable form: a code as its keyed hash, a session as its token's
//! SHA-256. Rows past their use (codes after 10 minutes, sessions after 30 idle days, counts
//! after an hour) are deleted by [`Store::purge`].

use sqlx::{AnyPool, Row};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS dashboard_codes (
        address TEXT PRIMARY KEY,
        mac TEXT NOT NULL,
        issued_ms BIGINT NOT NULL,
        tries BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dashboard_sessions (
        token_hash TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dashboard_sessions_seen ON dashboard_sessions (last_seen_ms)",
    "CREATE TABLE IF NOT EXISTS dashboard_hits (
        scope TEXT NOT NULL,
        subject TEXT NOT NULL,
        at_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dashboard_hits_subject ON dashboard_hits (scope, subject, at_ms)",
    "CREATE TABLE IF NOT EXISTS dashboard_standings (
        tenant_uid TEXT PRIMARY KEY,
        standing TEXT NOT NULL,
        at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dashboard_top_ups (
        nonce TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        intent TEXT,
        at_ms BIGINT NOT NULL)",
];

/// A top-up form's submission, as the first request that claimed it left it.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This request is the first: it pays.
    New,
    /// Another request claimed it; its PaymentIntent once it has one.
    Taken { tenant: String, intent: Option<String> },
}

/// The store could not be reached or failed; the words never hold a password.
#[derive(Debug, thiserror::Error)]
#[error("the dashboard store: {0}")]
pub struct StoreError(String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError(e.to_string())
    }
}

/// A code waiting to be entered.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeRow {
    pub mac: String,
    pub issued_ms: i64,
    pub tries: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub email: String,
    pub started_ms: i64,
    pub last_seen_ms: i64,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// Opens (and creates, for SQLite) the store: `sqlite:///path/dashboard.db`,
    /// `sqlite::memory:` (tests) or `postgres://user:password@host:port/db`.
    pub async fn open(dsn: &str) -> Result<Store, StoreError> {
        let pool = alcove_gateway::store::connect(dsn, SCHEMA).await.map_err(StoreError)?;
        Ok(Store { pool })
    }

    // ----- counts for limits -----

    /// Counts one more event of `subject` in `scope` if fewer than `max` happened in the window
    /// ending at `now_ms`; otherwise how long until the oldest leaves it.
    pub async fn take(
        &self,
        scope: &str,
        subject: &str,
        max: usize,
        window_ms: i64,
        now_ms: i64,
    ) -> Result<Result<(), i64>, StoreError> {
        let since = now_ms - window_ms;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(at_ms) AS oldest FROM dashboard_hits
             WHERE scope = $1 AND subject = $2 AND at_ms > $3",
        )
        .bind(scope)
        .bind(subject)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        if n >= max as i64 {
            let oldest: Option<i64> = row.try_get("oldest")?;
            return Ok(Err(oldest.unwrap_or(now_ms) + window_ms - now_ms));
        }
        sqlx::query("INSERT INTO dashboard_hits (scope, subject, at_ms) VALUES ($1, $2, $3)")
            .bind(scope)
            .bind(subject)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(Ok(()))
    }

    // ----- codes -----

    pub async fn code(&self, address: &str) -> Result<Option<CodeRow>, StoreError> {
        let row =
            sqlx::query("SELECT mac, issued_ms, tries FROM dashboard_codes WHERE address = $1")
                .bind(address)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some(CodeRow {
                mac: r.try_get("mac")?,
                issued_ms: r.try_get("issued_ms")?,
                tries: r.try_get("tries")?,
            }),
            None => None,
        })
    }

    /// The address's only code from now on.
    pub async fn put_code(
        &self,
        address: &str,
        mac: &str,
        issued_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dashboard_codes (address, mac, issued_ms, tries) VALUES ($1, $2, $3, 0)
             ON CONFLICT (address) DO UPDATE SET mac = excluded.mac,
                 issued_ms = excluded.issued_ms, tries = 0",
        )
        .bind(address)
        .bind(mac)
        .bind(issued_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes this exact code; whether it was still there (of two replicas taking the same
    /// code at once, one gets `true`).
    pub async fn take_code(&self, address: &str, mac: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM dashboard_codes WHERE address = $1 AND mac = $2")
            .bind(address)
            .bind(mac)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Counts a wrong try against this exact code; the tries so far (None: it is gone).
    pub async fn wrong_try(&self, address: &str, mac: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "UPDATE dashboard_codes SET tries = tries + 1 WHERE address = $1 AND mac = $2
             RETURNING tries",
        )
        .bind(address)
        .bind(mac)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("tries")?),
            None => None,
        })
    }

    // ----- sessions -----

    pub async fn put_session(
        &self,
        token_hash: &str,
        email: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dashboard_sessions (token_hash, email, started_ms, last_seen_ms)
             VALUES ($1, $2, $3, $3)",
        )
        .bind(token_hash)
        .bind(email)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn session(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT email, started_ms, last_seen_ms FROM dashboard_sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(SessionRow {
                email: r.try_get("email")?,
                started_ms: r.try_get("started_ms")?,
                last_seen_ms: r.try_get("last_seen_ms")?,
            }),
            None => None,
        })
    }

    pub async fn touch_session(&self, token_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE dashboard_sessions SET last_seen_ms = $2 WHERE token_hash = $1")
            .bind(token_hash)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn end_session(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dashboard_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes what can no longer be used at `now_ms`: codes issued before `codes_before`,
    /// sessions idle since before `sessions_before`, counts older than `hits_before`.
    pub async fn purge(
        &self,
        codes_before: i64,
        sessions_before: i64,
        hits_before: i64,
        top_ups_before: i64,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for (sql, cutoff) in [
            ("DELETE FROM dashboard_codes WHERE issued_ms <= $1", codes_before),
            ("DELETE FROM dashboard_sessions WHERE last_seen_ms <= $1", sessions_before),
            ("DELETE FROM dashboard_hits WHERE at_ms <= $1", hits_before),
            ("DELETE FROM dashboard_top_ups WHERE at_ms <= $1", top_ups_before),
        ] {
            n += sqlx::query(sql).bind(cutoff).execute(&self.pool).await?.rows_affected();
        }
        Ok(n)
    }

    // ----- notices -----

    /// Moves a tenant's last-told standing to `to`. `Ok(Some(before))` when this call moved it
    /// (`before`: `None` at first sight), so its caller alone tells the owners; `Ok(None)` when
    /// it already was `to` or another replica moved it first.
    pub async fn move_standing(
        &self,
        tenant_uid: &str,
        to: &str,
        now_ms: i64,
    ) -> Result<Option<Option<String>>, StoreError> {
        let row = sqlx::query("SELECT standing FROM dashboard_standings WHERE tenant_uid = $1")
            .bind(tenant_uid)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            let inserted = sqlx::query(
                "INSERT INTO dashboard_standings (tenant_uid, standing, at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant_uid) DO NOTHING",
            )
            .bind(tenant_uid)
            .bind(to)
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
            return Ok((inserted == 1).then_some(None));
        };
        let before: String = row.try_get("standing")?;
        if before == to {
            return Ok(None);
        }
        let moved = sqlx::query(
            "UPDATE dashboard_standings SET standing = $1, at_ms = $2
             WHERE tenant_uid = $3 AND standing = $4",
        )
        .bind(to)
        .bind(now_ms)
        .bind(tenant_uid)
        .bind(&before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((moved == 1).then_some(Some(before)))
    }

    // ----- top-ups -----

    /// Claims a top-up form's submission for this request: one conditional insert, so of two
    /// requests with the same nonce (a double click, a retry, two replicas) only one pays.
    pub async fn claim_top_up(
        &self,
        nonce: &str,
        tenant: &str,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO dashboard_top_ups (nonce, tenant, intent, at_ms) VALUES ($1, $2, NULL, $3)
             ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(tenant)
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::New);
        }
        let row = sqlx::query("SELECT tenant, intent FROM dashboard_top_ups WHERE nonce = $1")
            .bind(nonce)
            .fetch_one(&self.pool)
            .await?;
        Ok(Claim::Taken { tenant: row.try_get("tenant")?, intent: row.try_get("intent")? })
    }

    /// The PaymentIntent a claimed submission made.
    pub async fn top_up_paid(&self, nonce: &str, intent: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE dashboard_top_ups SET intent = $1 WHERE nonce = $2")
            .bind(intent)
            .bind(nonce)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives a claim up (the card was refused before any PaymentIntent was made).
    pub async fn release_top_up(&self, nonce: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM dashboard_top_ups WHERE nonce = $1 AND intent IS NULL")
            .bind(nonce)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every row of every table, as text (tests check that nothing secret is kept).
    pub async fn dump(&self) -> Result<String, StoreError> {
        let mut out = String::new();
        for (table, cols) in [
            ("dashboard_codes", "address, mac, issued_ms, tries"),
            ("dashboard_sessions", "token_hash, email, started_ms, last_seen_ms"),
            ("dashboard_hits", "scope, subject, at_ms"),
            ("dashboard_top_ups", "nonce, tenant, intent, at_ms"),
            ("dashboard_standings", "tenant_uid, standing, at_ms"),
        ] {
            for r in
                sqlx::query(&format!("SELECT {cols} FROM {table}")).fetch_all(&self.pool).await?
            {
                let cells: Vec<String> = (0..r.len())
                    .map(|i| {
                        r.try_get::<String, _>(i)
                            .or_else(|_| r.try_get::<i64, _>(i).map(|v| v.to_string()))
                            .unwrap_or_default()
                    })
                    .collect();
                out.push_str(&format!("{table}: {}\n", cells.join(" | ")));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_refuse_past_the_limit_until_the_oldest_leaves_the_window() {
        let s = Store::open("sqlite::memory:").await.unwrap();
        for t in [0, 10, 20] {
            assert_eq!(s.take("client", "127.0.0.1", 3, 100, t).await.unwrap(), Ok(()));
        }
        assert_eq!(s.take("client", "127.0.0.1", 3, 100, 50).await.unwrap(), Err(50));
        assert_eq!(s.take("client", "10.0.0.1", 3, 100, 50).await.unwrap(), Ok(()), "per subject");
        assert_eq!(s.take("address", "127.0.0.1", 3, 100, 50).await.unwrap(), Ok(()), "per scope");
        assert_eq!(s.take("client", "127.0.0.1", 3, 100, 100).await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_code_is_taken_once_and_tries_count_against_that_code_only() {
        let s = Store::open("sqlite::memory:").await.unwrap();
        s.put_code("ada@example.com", "m1", 0).await.unwrap();
        assert_eq!(s.wrong_try("ada@example.com", "m1").await.unwrap(), Some(1));
        s.put_code("ada@example.com", "m2", 5).await.unwrap();
        assert_eq!(
            s.code("ada@example.com").await.unwrap(),
            Some(CodeRow { mac: "m2".into(), issued_ms: 5, tries: 0 })
        );
        assert_eq!(s.wrong_try("ada@example.com", "m1").await.unwrap(), None, "replaced");
        assert!(!s.take_code("ada@example.com", "m1").await.unwrap());
        assert!(s.take_code("ada@example.com", "m2").await.unwrap());
        assert!(!s.take_code("ada@example.com", "m2").await.unwrap(), "once");
    }

    #[tokio::test]
    async fn a_standing_moves_once_per_change() {
        let s = Store::open("sqlite::memory:").await.unwrap();
        assert_eq!(s.move_standing("u1", "low", 1).await.unwrap(), Some(None), "first sight");
        assert_eq!(s.move_standing("u1", "low", 2).await.unwrap(), None, "no change, no news");
        assert_eq!(
            s.move_standing("u1", "exhausted@t", 3).await.unwrap(),
            Some(Some("low".into()))
        );
        assert_eq!(s.move_standing("u1", "exhausted@t", 4).await.unwrap(), None, "told once");
    }

    #[tokio::test]
    async fn a_top_up_is_claimed_once_and_released_only_unpaid() {
        let s = Store::open("sqlite::memory:").await.unwrap();
        assert_eq!(s.claim_top_up("n1", "acme", 1).await.unwrap(), Claim::New);
        assert_eq!(
            s.claim_top_up("n1", "acme", 2).await.unwrap(),
            Claim::Taken { tenant: "acme".into(), intent: None },
            "a second submission of the same form does not pay"
        );
        s.top_up_paid("n1", "pi_1").await.unwrap();
        s.release_top_up("n1").await.unwrap();
        assert_eq!(
            s.claim_top_up("n1", "acme", 3).await.unwrap(),
            Claim::Taken { tenant: "acme".into(), intent: Some("pi_1".into()) },
            "a paid claim is kept"
        );
        assert_eq!(s.claim_top_up("n2", "acme", 1).await.unwrap(), Claim::New);
        s.release_top_up("n2").await.unwrap();
        assert_eq!(
            s.claim_top_up("n2", "acme", 4).await.unwrap(),
            Claim::New,
            "refused cards may try again"
        );
    }

    #[tokio::test]
    async fn purge_removes_only_what_is_past_its_use() {
        let s = Store::open("sqlite::memory:").await.unwrap();
        s.put_code("old@example.com", "m", 0).await.unwrap();
        s.put_code("new@example.com", "m", 100).await.unwrap();
        s.put_session("h1", "ada@example.com", 0).await.unwrap();
        s.put_session("h2", "ada@example.com", 0).await.unwrap();
        s.touch_session("h2", 100).await.unwrap();
        s.take("client", "x", 9, 1000, 0).await.unwrap().unwrap();
        s.claim_top_up("n-old", "acme", 0).await.unwrap();
        s.claim_top_up("n-new", "acme", 100).await.unwrap();
        assert_eq!(s.purge(50, 50, 50, 50).await.unwrap(), 4);
        assert!(matches!(s.claim_top_up("n-new", "acme", 101).await.unwrap(), Claim::Taken { .. }));
        assert!(s.code("new@example.com").await.unwrap().is_some());
        assert!(s.session("h1").await.unwrap().is_none());
        assert_eq!(s.session("h2").await.unwrap().unwrap().last_seen_ms, 100);
    }

    /// Two replicas on one store: a code asked for on one is taken on the other, once, and a
    /// session started on one is live on the other until it ends there.
    async fn two_replicas_share_codes_and_sessions(dsn: &str) {
        use crate::codes::{Address, Codes, Rejected};
        use crate::session::Sessions;
        let (a, b) = tokio::join!(Store::open(dsn), Store::open(dsn));
        let (a, b) = (a.unwrap(), b.unwrap());
        let now: jiff::Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        let (ca, cb) = (Codes::new([3; 32], a.clone()), Codes::new([3; 32], b.clone()));
        let ada = Address::parse("ada@example.com").unwrap();
        let client = std::net::IpAddr::from([127, 0, 0, 1]);
        let code = ca.issue(&ada, client, now).await.unwrap();
        let (x, y) = tokio::join!(ca.verify(&ada, &code, now), cb.verify(&ada, &code, now));
        let mut answers = [x, y];
        answers.sort_by_key(|r| r.is_err());
        assert_eq!(answers, [Ok(()), Err(Rejected::NoCode)], "one sign-in per code");
        let (sa, sb) = (Sessions::new([4; 32], a), Sessions::new([4; 32], b));
        let token = sa.start("ada@example.com", now).await.unwrap();
        assert_eq!(sb.resume(&token, now).await.unwrap().unwrap().email, "ada@example.com");
        assert_eq!(sa.csrf(&token), sb.csrf(&token), "a form from one replica posts to the other");
        sb.end(&token).await.unwrap();
        assert!(sa.resume(&token, now).await.unwrap().is_none(), "signed out everywhere");
    }

    #[tokio::test]
    async fn sqlite_is_shared_by_two_openers() {
        let dir = tempfile::tempdir().unwrap();
        two_replicas_share_codes_and_sessions(&format!(
            "sqlite://{}",
            dir.path().join("dashboard.db").display()
        ))
        .await;
    }

    #[tokio::test]
    async fn postgresql_is_shared_by_two_replicas() {
        let pg = alcove_testkit::postgres::Postgres::start();
        two_replicas_share_codes_and_sessions(&pg.dsn).await;
    }
}
