//! TLS to PostgreSQL: a throwaway cluster with TLS on and a certificate
//! from a CA made here, reached with each `sslmode` an operator writes in
//! the URL. The store itself runs over TLS (create, read back), and the
//! server confirms the session is encrypted (`pg_stat_ssl`).

use std::sync::OnceLock;
use std::time::Duration;

use durable::store::postgres::{PgTarget, PgUrlError, PostgresConfig, PostgresStore};
use durable::store::NewInstance;
use durable::testing::{ClusterOptions, PgCluster, ServerTls};
use durable::{InstanceId, Store};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

struct Tls {
    cluster: PgCluster,
    /// The CA that signed the server's certificate.
    ca: tempfile::NamedTempFile,
    /// A CA that signed nothing of this server's.
    stranger: tempfile::NamedTempFile,
}

fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

fn pem_file(pem: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), pem).unwrap();
    f
}

/// One TLS cluster for the whole test binary; its certificate names
/// `localhost` only (not 127.0.0.1), so `verify-full` must be asked for
/// the right name.
fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(|| {
        let (ca, ca_key) = make_ca("galaxy-forge test CA");
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let (stranger, _) = make_ca("someone else's CA");
        let cluster = PgCluster::start(ClusterOptions {
            tls: Some(ServerTls {
                cert_pem: server.pem(),
                key_pem: key.serialize_pem(),
            }),
            ..ClusterOptions::fast()
        })
        .expect("a TLS cluster");
        Tls {
            cluster,
            ca: pem_file(&ca.pem()),
            stranger: pem_file(&stranger.pem()),
        }
    })
}

fn url(host: &str, params: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/postgres?connect_timeout=10&{params}",
        tls().cluster.port()
    )
}

/// Whether the server sees this connection encrypted.
async fn encrypted(url: &str) -> Result<bool, String> {
    let target = PgTarget::parse(url).map_err(|e| e.to_string())?;
    let (client, conn) = target
        .connect()
        .await
        .map_err(|e| durable::store::postgres::error_chain(&e))?;
    tokio::spawn(conn);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    Ok(ssl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_verify_full_encrypt_and_the_store_works_over_them() {
    let ca = tls().ca.path().display().to_string();
    assert_eq!(
        encrypted(&url("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    let full = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_eq!(encrypted(&full).await, Ok(true));
    // The default (prefer) takes TLS when the server offers it.
    assert_eq!(encrypted(&url("127.0.0.1", "")).await, Ok(true));
    assert_eq!(
        encrypted(&url("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );

    // The engine's store, with its pools and its listener, over verify-full.
    let store = PostgresStore::connect(PostgresConfig::new(full))
        .await
        .expect("the store over TLS");
    let id = InstanceId::new("over-tls").unwrap();
    store
        .create_instance(NewInstance {
            instance_id: id.clone(),
            name: "Orch".into(),
            input: serde_json::json!("secret"),
            execution_id: "over-tls@1".into(),
            parent: None,
            created_at: durable::types::now(),
            only_if_absent: false,
        })
        .await
        .unwrap();
    let status = store.get_instance(&id, false).await.unwrap().unwrap();
    assert_eq!(status.input, serde_json::json!("secret"));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_is_refused() {
    let ca = tls().ca.path().display().to_string();
    let stranger = tls().stranger.path().display().to_string();
    // Signed by a CA we do not trust.
    let err = encrypted(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={stranger}"),
    ))
    .await
    .unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    // Trusted, but not for the name we asked for (it names localhost).
    let err = encrypted(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap_err();
    assert!(
        err.to_lowercase().contains("name") || err.contains("NotValidFor"),
        "{err}"
    );
    // verify-ca checks the chain only: that name is fine there.
    assert_eq!(
        encrypted(&url(
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={ca}")
        ))
        .await,
        Ok(true)
    );
    // ...and the stranger's CA is not.
    assert!(encrypted(&url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={stranger}")
    ))
    .await
    .is_err());
    // The store says why, and does not start.
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        PostgresStore::connect(PostgresConfig::new(url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={stranger}"),
        ))),
    )
    .await
    .expect("refused promptly");
    let err = refused.expect_err("the store must not start").to_string();
    assert!(
        err.contains("TLS") && err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[test]
fn verifying_without_roots_is_a_clear_error() {
    let err = PgTarget::parse("postgres://postgres@localhost/db?sslmode=verify-full").unwrap_err();
    assert!(matches!(err, PgUrlError::NoRoots(_)));
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}
