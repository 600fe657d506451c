//! Replicas started together on a fresh read database: creating and migrating it is
//! serialised, so every one of them opens it.

use service_kit::settings::SecretUrl;
use test_support::servers::mysql_server;

#[tokio::test]
async fn replicas_started_together_on_a_fresh_database_all_open_it() {
    // Given a read database that does not exist yet
    let url = format!(
        "{}/qs_test_together_{}",
        mysql_server(),
        uuid::Uuid::now_v7().simple()
    );
    let url = SecretUrl::new(url);

    // When eight replicas open it at the same moment
    let opening = (0..8).map(|_| query_service::store::ReadStore::open(&url, 2));
    let opened = futures::future::join_all(opening).await;

    // Then every one of them opens it, migrated
    for result in opened {
        if let Err(error) = result {
            panic!("a replica could not open the read model: {error}");
        }
    }
}
