//! `ldx-node audit verify` walks a real node's audit chain from its data directory: clean
//! while the node runs and after it stopped, and it names where the chain breaks when one
//! entry of the stopped node's RocksDB is edited or deleted.

use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_node::rocksdb::{ColumnFamily, DB, Options};
use ldx_node::storage::keys::AuditKey;
use ldx_node::storage::records::AuditEntry;
use ldx_node::storage::{cf, codec};
use ldx_proto::v1 as pb;
use ldx_tests::{Federation, TestNode};

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const DIVISION: &str = "410103007";

fn verify(node: &TestNode) -> (bool, String) {
    let out = node.cli(&["audit", "verify"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `change` on the audit column family of the stopped node's RocksDB, opened as an
/// intruder with file access would, and closes it again.
fn tamper<T>(node: &TestNode, change: impl FnOnce(&DB, &ColumnFamily) -> T) -> T {
    let db = DB::open_cf(&Options::default(), node.data_dir(), cf::ALL).unwrap();
    change(&db, db.cf_handle(cf::AUDIT).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_finds_an_edited_and_a_deleted_entry() {
    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    node.start().await.unwrap();
    let mut client = node.registry().await.unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    for n in 0..10 {
        let request = synthetic::person("411421", n).move_in(DIVISION, date, pb::Category::MixedCommunity);
        client.register_move_in(request.clone()).await.unwrap();
        client.get_person(pb::GetPersonRequest { id_number: request.id_number }).await.unwrap();
    }
    // Three entries precede them: the first admin made by init, the harness's account and
    // its log-in. Read only: it works beside the running node.
    let (ok, text) = verify(&node);
    assert!(ok && text.contains("audit chain intact: 23 entries"), "{text}");
    assert!(node.stop().await.unwrap());
    let (ok, text) = verify(&node);
    assert!(ok && text.contains("audit chain intact: 23 entries"), "{text}");

    // One value edited: the read of entry 5 made to look like another action.
    let original = tamper(&node, |db, audit| {
        let original = db.get_cf(audit, AuditKey(5).encode()).unwrap().unwrap();
        let mut entry: AuditEntry = codec::decode("audit entry", &original).unwrap();
        entry.action = "list".into();
        db.put_cf(audit, AuditKey(5).encode(), codec::encode(&entry)).unwrap();
        original
    });
    let (ok, text) = verify(&node);
    assert!(!ok, "an edited entry verified: {text}");
    assert!(text.contains("audit entry 5 or 6 was changed: entry 6 does not link to the hash of entry 5"), "{text}");

    // Put back, it verifies again; then one entry deleted.
    tamper(&node, |db, audit| db.put_cf(audit, AuditKey(5).encode(), &original).unwrap());
    assert!(verify(&node).0, "the restored chain does not verify");
    let seventh = tamper(&node, |db, audit| {
        let seventh = db.get_cf(audit, AuditKey(7).encode()).unwrap().unwrap();
        db.delete_cf(audit, AuditKey(7).encode()).unwrap();
        seventh
    });
    let (ok, text) = verify(&node);
    assert!(!ok, "a chain with a deleted entry verified: {text}");
    assert!(text.contains("audit entry 7 is missing (entry 8 follows 6)"), "{text}");

    // Entry 7 back, the last entry deleted (a truncated log): the head still names it.
    tamper(&node, |db, audit| {
        db.put_cf(audit, AuditKey(7).encode(), &seventh).unwrap();
        db.delete_cf(audit, AuditKey(23).encode()).unwrap();
    });
    let (ok, text) = verify(&node);
    assert!(!ok, "a truncated chain verified: {text}");
    assert!(text.contains("audit entry 23 is missing: the log ends at 22, the head names 23"), "{text}");
}
