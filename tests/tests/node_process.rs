//! A real `ldx-node` process: durability across SIGKILL, clean SIGTERM, the CLI, bad input
//! over the wire, reflection, and no personal data in clear on disk or in the log.

use std::collections::HashMap;

use chrono::NaiveDate;
use ldx_gateway::synthetic;
use ldx_proto::v1 as pb;
use ldx_tests::all_persons;
use ldx_tests::{Federation, TestNode, files_containing};
use tonic::Code;

const NODE: &str = env!("CARGO_BIN_EXE_ldx-node-harness");
const DIVISION: &str = "410103007";

fn date(n: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(u64::from(n % 300))
}

fn move_in(n: u32) -> pb::RegisterMoveInRequest {
    synthetic::person("411421", n).move_in(DIVISION, date(n), synthetic::category(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_persons_survive_sigkill_and_restart() {
    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    node.start().await.unwrap();

    // 1,000 move-ins from 16 concurrent staff clients, each acknowledged only once durable.
    let mut tasks = Vec::new();
    for worker in 0..16u32 {
        let mut client = node.registry().await.unwrap();
        tasks.push(tokio::spawn(async move {
            for n in (worker..1000).step_by(16) {
                let resp = client.register_move_in(move_in(n)).await.unwrap().into_inner();
                assert!(resp.created);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A few services, so records hold more than the move-in.
    let mut client = node.registry().await.unwrap();
    for n in (0..1000).step_by(100) {
        client
            .record_service(pb::RecordServiceRequest {
                id_number: move_in(n).id_number,
                kind: pb::ServiceKind::HealthCheck as i32,
                date: "2026-10-08".into(),
                details: "季度健康检查".into(),
            })
            .await
            .unwrap();
    }
    let before = all_persons(&node).await;
    assert_eq!(before.len(), 1000);

    node.kill().unwrap();
    node.start().await.unwrap();

    let after = all_persons(&node).await;
    assert_eq!(after, before, "records changed across SIGKILL and restart");
    let by_id: HashMap<_, _> = after.iter().map(|p| (p.id_number.clone(), p)).collect();
    for n in 0..1000 {
        let req = move_in(n);
        let p = by_id.get(&req.id_number).unwrap_or_else(|| panic!("person {n} lost"));
        assert_eq!(
            (p.name.as_str(), p.address.as_str(), p.phone.as_str()),
            (req.name.as_str(), req.address.as_str(), req.phone.as_str())
        );
        assert_eq!((p.division.as_str(), p.move_in_date.as_str()), (DIVISION, req.date.as_str()));
        assert_eq!((p.category, p.role), (req.category, req.role));
        assert_eq!(p.origin_division, "411421");
        assert_eq!(p.services.len(), usize::from(n % 100 == 0));
    }

    // The restarted node still takes writes, and a repeated move-in is still idempotent.
    let mut client = node.registry().await.unwrap();
    let resp = client.register_move_in(move_in(5)).await.unwrap().into_inner();
    assert!(!resp.created);
    assert!(client.register_move_in(move_in(1000)).await.unwrap().into_inner().created);

    assert!(node.stop().await.unwrap(), "SIGTERM must stop the node cleanly");
    assert!(node.log().contains("node stopped"), "log:\n{}", node.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_named_and_nothing_stored() {
    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    node.start().await.unwrap();
    let mut client = node.registry().await.unwrap();
    for n in 0..3 {
        client.register_move_in(move_in(n)).await.unwrap();
    }
    let before = all_persons(&node).await;

    let future = (chrono::Utc::now() + chrono::Duration::days(3)).date_naive().to_string();
    type Mutation = Box<dyn Fn(&mut pb::RegisterMoveInRequest)>;
    let cases: Vec<(&str, &str, Mutation)> = vec![
        ("invalid ID", "id_number", Box::new(|r| r.id_number = "410103199001010010".into())),
        ("short ID", "id_number", Box::new(|r| r.id_number = "4101031990".into())),
        ("unknown division", "division", Box::new(|r| r.division = "410103999".into())),
        ("division of another node", "division", Box::new(|r| r.division = "410103003".into())),
        ("impossible date", "date", Box::new(|r| r.date = "2026-02-30".into())),
        ("future date", "date", Box::new(move |r| r.date = future.clone())),
        ("empty name", "name", Box::new(|r| r.name = "  ".into())),
        ("oversized name", "name", Box::new(|r| r.name = "名".repeat(65))),
        ("empty address", "address", Box::new(|r| r.address = String::new())),
        ("oversized address", "address", Box::new(|r| r.address = "路".repeat(257))),
        ("unknown category", "category", Box::new(|r| r.category = 17)),
        ("missing category", "category", Box::new(|r| r.category = 0)),
        ("unknown role", "role", Box::new(|r| r.role = 9)),
    ];
    for (what, field, mutate) in &cases {
        let mut req = move_in(50);
        mutate(&mut req);
        let status = client.register_move_in(req).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().starts_with(&format!("{field}: ")), "{what}: {}", status.message());
        assert!(
            status.message().contains(" must ")
                || status.message().contains(" is ")
                || status.message().contains(" fails ")
                || status.message().contains(" holds "),
            "{what}: no rule in {}",
            status.message()
        );
    }
    let status = client
        .record_service(pb::RecordServiceRequest {
            id_number: move_in(0).id_number,
            kind: pb::ServiceKind::HealthCheck as i32,
            date: "2026-13-01".into(),
            details: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("date: \"2026-13-01\""), "{}", status.message());
    let status = client
        .register_move_out(pb::RegisterMoveOutRequest {
            id_number: move_in(1).id_number,
            date: "2026-02-30".into(),
            next_division: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The ID number never echoes back in clear.
    let status = client.get_person(pb::GetPersonRequest { id_number: "410103199001010010".into() }).await.unwrap_err();
    assert!(!status.message().contains("199001010"), "{}", status.message());

    assert_eq!(all_persons(&node).await, before, "a refused request changed the store");

    // The same move-in twice: same answer, no duplicate.
    let first = client.register_move_in(move_in(0)).await.unwrap().into_inner();
    assert!(!first.created);
    assert_eq!(all_persons(&node).await.len(), 3);

    // The CLI prints the node's message and fails.
    let out = node.cli(&[
        "person",
        "add",
        "--id",
        "410103199001010010",
        "--name",
        "测试",
        "--category",
        "market",
        "--address",
        "x",
        "--date",
        "2026-01-01",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("id_number:") && stderr.contains("check digit"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_number_or_name_in_clear_on_disk_or_in_the_log() {
    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    node.start().await.unwrap();
    let mut client = node.registry().await.unwrap();
    let marked = pb::RegisterMoveInRequest {
        name: "测试甲乙丙".into(),
        address: "二七区测试路 99 号".into(),
        phone: "13912345678".into(),
        ..move_in(7)
    };
    for n in 0..50 {
        client.register_move_in(move_in(n + 100)).await.unwrap();
    }
    client.register_move_in(marked.clone()).await.unwrap();
    client
        .record_service(pb::RecordServiceRequest {
            id_number: marked.id_number.clone(),
            kind: pb::ServiceKind::HealthCheck as i32,
            date: "2026-10-08".into(),
            details: "检查记录测试文本".into(),
        })
        .await
        .unwrap();
    client.get_person(pb::GetPersonRequest { id_number: marked.id_number.clone() }).await.unwrap();
    assert!(node.stop().await.unwrap());

    let data = node.data_dir();
    // Control: the grep does read the store, where routing fields are kept in clear.
    assert!(!files_containing(&data, DIVISION.as_bytes()).unwrap().is_empty(), "the store files were not read");
    for (what, needle) in [
        ("ID number", marked.id_number.as_str()),
        ("name", marked.name.as_str()),
        ("address", marked.address.as_str()),
        ("phone", marked.phone.as_str()),
        ("service details", "检查记录测试文本"),
    ] {
        let found = files_containing(&data, needle.as_bytes()).unwrap();
        assert!(found.is_empty(), "{what} in clear in {found:?}");
        assert!(!node.log().contains(needle), "{what} in clear in the node log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_and_health_says_serving() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    node.start().await.unwrap();
    let mut client = ServerReflectionClient::new(
        tonic::transport::Channel::from_shared(node.endpoint().to_owned()).unwrap().connect().await.unwrap(),
    );
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["ldx.v1.Registry", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    // The descriptor of the Registry service resolves, as grpcurl needs for calls.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("ldx.v1.Registry".into())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_cli_registers_lists_and_moves_out() {
    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    node.start().await.unwrap();
    let p = synthetic::person("411723", 42);

    let ok = |args: &[&str]| {
        let out = node.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = ok(&[
        "person",
        "add",
        "--id",
        &p.id_number,
        "--name",
        &p.name,
        "--category",
        "urban-village",
        "--address",
        &p.address,
        "--date",
        "2026-05-01",
    ]);
    assert!(text.contains("urban-village") && text.contains(&p.name), "{text}");
    let again = ok(&[
        "person",
        "add",
        "--id",
        &p.id_number,
        "--name",
        &p.name,
        "--category",
        "urban-village",
        "--address",
        &p.address,
        "--date",
        "2026-05-01",
    ]);
    assert!(again.contains("nothing changed"), "{again}");

    ok(&["service", "add", &p.id_number, "--date", "2026-07-08", "--details", "健康检查"]);
    let shown: serde_json::Value = serde_json::from_str(&ok(&["person", "show", &p.id_number, "--json"])).unwrap();
    assert_eq!(shown["origin_division"], "411723");
    assert_eq!(shown["category"], "urban-village");
    assert_eq!(shown["services"][0]["date"], "2026-07-08");

    let table = ok(&["person", "list"]);
    assert!(table.contains(&p.name) && table.contains("1 person(s)"), "{table}");
    ok(&["person", "move-out", &p.id_number, "--date", "2026-09-30", "--next-division", "410102001"]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["person", "list", "--status", "moved-out", "--json"])).unwrap();
    assert_eq!(listed["persons"].as_array().unwrap().len(), 1);
    assert_eq!(listed["persons"][0]["move_out_date"], "2026-09-30");
    let active: serde_json::Value =
        serde_json::from_str(&ok(&["person", "list", "--status", "active", "--json"])).unwrap();
    assert!(active["persons"].as_array().unwrap().is_empty());

    let out = node.cli(&["person", "show", &synthetic::person("411723", 43).id_number]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no person"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_stops_the_node_with_the_key_named() {
    let federation = Federation::new().unwrap();
    let mut node = TestNode::init(NODE, &federation, DIVISION).unwrap();
    let config = std::fs::read_to_string(node.config()).unwrap();
    std::fs::write(node.config(), config.replace("division = \"410103007\"", "division = \"410103999\"")).unwrap();
    let err = node.start().await.unwrap_err().to_string();
    assert!(err.contains("config key division") && err.contains("official division code list"), "{err}");

    std::fs::write(node.config(), config.replace("sync_writes = true", "sync_writes = sometimes")).unwrap();
    let err = node.start().await.unwrap_err().to_string();
    assert!(err.contains("sync_writes"), "{err}");

    // init never overwrites a node's files.
    let out = std::process::Command::new(NODE)
        .args(["init", "--division", DIVISION, "--dir"])
        .arg(node.config().parent().unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
