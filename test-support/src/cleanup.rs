//! What a test created on the shared servers, removed after it (best effort, bounded
//! in time), even from a `Drop` running inside the test's runtime.

use std::time::Duration;

use sqlx::Connection;

use crate::amqp::Broker;
use crate::servers::{mysql_server, postgres_url};

/// Databases, queues and exchanges a test created.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    pub postgres_databases: Vec<String>,
    pub mysql_databases: Vec<String>,
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
}

impl Leftovers {
    /// Drops them all; what does not exist, or cannot be reached within 15 s, is skipped.
    pub async fn remove(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(15), self.remove_all()).await;
    }

    /// [`Leftovers::remove`] on a runtime and thread of its own, for `Drop`.
    pub fn remove_blocking(self) {
        let cleanup = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(self.remove());
            }
        });
        let _ = cleanup.join();
    }

    async fn remove_all(&self) {
        if (!self.queues.is_empty() || !self.exchanges.is_empty())
            && let Ok(broker) = Broker::try_connect().await
        {
            broker.delete(&self.queues, &self.exchanges).await;
            broker.close().await;
        }
        if !self.postgres_databases.is_empty()
            && let Ok(mut postgres) = sqlx::PgConnection::connect(&postgres_url("postgres")).await
        {
            for database in &self.postgres_databases {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                )))
                .execute(&mut postgres)
                .await;
            }
            let _ = postgres.close().await;
        }
        if !self.mysql_databases.is_empty()
            && let Ok(mut mysql) = sqlx::MySqlConnection::connect(&mysql_server()).await
        {
            for database in &self.mysql_databases {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{database}`"
                )))
                .execute(&mut mysql)
                .await;
            }
            let _ = mysql.close().await;
        }
    }
}
