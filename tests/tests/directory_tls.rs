//! The directory over TLS. It used to travel in plain HTTP/2 only, so a party on the path
//! saw every version and could hold a node's stream open on the directory it started with.
//! Now the gateway's port speaks TLS with the gateway's certificate (and plain HTTP/2
//! beside it); every node of the harness dials `https://`, checking that certificate
//! against the federation CA for the name `gateway.ldx`.

use ldx_gateway::pki;
use ldx_proto::v1::FetchDirectoryRequest;
use ldx_proto::v1::directory_client::DirectoryClient;
use ldx_tests::cluster::Cluster;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const NODE: &str = "410103007";

async fn fetch(channel: Channel) -> Result<u64, tonic::Status> {
    let response = DirectoryClient::new(channel).fetch(FetchDirectoryRequest { known_version: 0 }).await?;
    Ok(response.into_inner().directory.map_or(0, |d| d.body.len() as u64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_served_over_tls_to_holders_of_the_federation_ca() {
    let cluster = Cluster::builder().nodes([NODE]).start().await.unwrap();
    let https = cluster.gateway_endpoint().unwrap();
    assert!(https.starts_with("https://"), "{https}");
    // The node of the harness got its directory this way.
    assert!(cluster.node(NODE).status().await.unwrap().directory_version > 0);

    let ca = Certificate::from_pem(std::fs::read(cluster.pki_dir().join(pki::CA_CERT)).unwrap());
    let tls = ClientTlsConfig::new().ca_certificate(ca).domain_name(ldx_proto::identity::GATEWAY_DNS_NAME);
    let channel = Channel::from_shared(https.clone()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    assert!(fetch(channel).await.unwrap() > 0, "a signed directory over TLS");

    // Another CA's client does not take the gateway's certificate.
    let other = tempfile::tempdir().unwrap();
    pki::init(other.path()).unwrap();
    let foreign = Certificate::from_pem(std::fs::read(other.path().join(pki::CA_CERT)).unwrap());
    let tls = ClientTlsConfig::new().ca_certificate(foreign).domain_name(ldx_proto::identity::GATEWAY_DNS_NAME);
    let refused = match Channel::from_shared(https.clone()).unwrap().tls_config(tls).unwrap().connect().await {
        Err(e) => format!("{e:?}"),
        Ok(channel) => fetch(channel).await.map(|n| format!("fetched {n} bytes")).unwrap_or_else(|s| format!("{s:?}")),
    };
    assert!(!refused.starts_with("fetched"), "{refused}");
    println!("a client trusting another CA: {refused}");

    // Plain HTTP/2 on the same port still answers (health checks, older configs).
    let plain = https.replacen("https://", "http://", 1);
    let channel = Channel::from_shared(plain).unwrap().connect().await.unwrap();
    assert!(fetch(channel).await.unwrap() > 0);
}
