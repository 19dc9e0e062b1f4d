//! A fresh database for one test: a SQLite file in a temporary directory,
//! or a PostgreSQL schema of its own in the shared test database (so tests
//! run in parallel without seeing each other), dropped when the test ends.
//!
//! PostgreSQL is `KEYPOOL_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test` (trust auth), which the test
//! command (`scripts/test`) starts when it is not running. The PostgreSQL
//! tests fail, never skip, when it cannot be reached.

use std::str::FromStr;

use sqlx::Connection;

use keypool::store::Store;

/// The shared PostgreSQL test database.
pub fn postgres_url() -> String {
    std::env::var("KEYPOOL_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A migrated store on a database no other test uses.
pub struct Scratch {
    pub store: Store,
    /// The URL the store was opened with (a PostgreSQL one sets `search_path`).
    pub url: String,
    _cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Schema(String),
}

impl Scratch {
    pub async fn sqlite() -> Scratch {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url).await.expect("a SQLite store");
        Scratch { store, url, _cleanup: Cleanup::Dir(dir) }
    }

    pub async fn postgres() -> Scratch {
        let (url, schema) = Scratch::empty_postgres().await;
        let store = Store::connect(&url).await.expect("a PostgreSQL store");
        Scratch { store, url, _cleanup: Cleanup::Schema(schema) }
    }

    /// A schema of its own with nothing in it: its URL and its name (for
    /// [`Scratch::drop_schema`]).
    pub async fn empty_postgres() -> (String, String) {
        let base = postgres_url();
        let schema = format!("kp_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let mut admin = sqlx::PgConnection::connect(&base).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {base} cannot be reached ({e}); `bash scripts/test` starts it, or set KEYPOOL_TEST_POSTGRES_URL")
        });
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut admin).await.expect("CREATE SCHEMA");
        let _ = admin.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        (format!("{base}{sep}options=-csearch_path%3D{schema}"), schema)
    }

    /// Drops a schema made by [`Scratch::empty_postgres`] (a [`Scratch`]
    /// drops its own).
    pub fn drop_schema(schema: &str) {
        // Drop cannot await, and the test's runtime may be shutting down: a
        // thread of its own with a runtime of its own drops the schema.
        let (schema, base) = (schema.to_owned(), postgres_url());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let options = sqlx::postgres::PgConnectOptions::from_str(&base).ok()?;
                let mut admin = sqlx::PgConnection::connect_with(&options).await.ok()?;
                // A failed test may leave a gateway's connection in a
                // transaction on this schema, unable to finish while this
                // thread holds the test's: give up rather than wait forever.
                sqlx::query("SET lock_timeout = '5s'").execute(&mut admin).await.ok()?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut admin).await.ok()?;
                admin.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Cleanup::Schema(schema) = &self._cleanup {
            Scratch::drop_schema(schema);
        }
    }
}

/// One `#[tokio::test]` per backend for each body: `sqlite::NAME` and `postgres::NAME`.
#[allow(unused_macros)]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Scratch::sqlite().await).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::Scratch::postgres().await).await })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both;
