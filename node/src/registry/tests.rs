use super::*;
use crate::clock::ManualClock;
use crate::domain::id::with_check_digit;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    registry: Registry,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), "410103007", false).unwrap());
    let clock = Arc::new(ManualClock::new("2026-11-23T02:00:00Z".parse().unwrap()));
    let registry = Registry::new(
        store.clone(),
        DataKey::from_bytes(&[3; 32]),
        FederationSalt::from_bytes([4; 32]),
        clock,
        Division::parse("division", "410103007").unwrap(),
    )
    .unwrap();
    Fixture { _dir: dir, store, registry }
}

fn move_in(n: u32) -> pb::RegisterMoveInRequest {
    pb::RegisterMoveInRequest {
        id_number: with_check_digit(&format!("41142119900101{n:03}")),
        name: format!("测试{n}"),
        phone: "13800000000".into(),
        category: pb::Category::MixedCommunity as i32,
        role: pb::Role::Residence as i32,
        division: "410103007".into(),
        address: format!("大学路 {n} 号"),
        date: "2026-03-01".into(),
        household_division: String::new(),
        urgent: false,
        reason_of_stay: 0,
    }
}

/// Everything a rejected request must leave untouched: person records and the audit head.
fn snapshot(store: &Store) -> (Vec<(PersonKey, PersonRecord)>, AuditHead) {
    (store.persons_after(None).map(Result::unwrap).collect(), store.audit_head().unwrap())
}

#[test]
fn move_in_is_stored_and_read_back() {
    let f = fixture();
    let (person, created) = f.registry.move_in(&move_in(1)).unwrap();
    assert!(created);
    assert_eq!(person.origin_division, "411421");
    assert_eq!(person.status, pb::PersonStatus::Active as i32);
    let read = f.registry.get(&pb::GetPersonRequest { id_number: move_in(1).id_number }).unwrap();
    assert_eq!(read, person);
    assert_eq!(read.name, "测试1");
}

#[test]
fn second_identical_move_in_is_idempotent() {
    let f = fixture();
    let (first, _) = f.registry.move_in(&move_in(1)).unwrap();
    let (again, created) = f.registry.move_in(&move_in(1)).unwrap();
    assert!(!created);
    assert_eq!(first, again);
    assert_eq!(f.store.persons_after(None).count(), 1);
}

#[test]
fn a_different_move_in_for_an_active_person_is_refused() {
    let f = fixture();
    f.registry.move_in(&move_in(1)).unwrap();
    let before = snapshot(&f.store);
    let mut changed = move_in(1);
    changed.address = "别处".into();
    let err = f.registry.move_in(&changed).unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyRegistered { .. }), "{err}");
    assert_eq!(snapshot(&f.store), before);
}

type Mutation = fn(&mut pb::RegisterMoveInRequest);

#[test]
fn bad_input_names_the_field_and_stores_nothing() {
    let f = fixture();
    f.registry.move_in(&move_in(1)).unwrap();
    let before = snapshot(&f.store);
    let cases: [(&str, Mutation); 8] = [
        ("id_number", |r| r.id_number = "410103199001010010".into()),
        ("division", |r| r.division = "410103999".into()),
        ("date", |r| r.date = "2026-02-30".into()),
        ("date", |r| r.date = "2030-01-01".into()),
        ("name", |r| r.name = String::new()),
        ("address", |r| r.address = "x".repeat(300)),
        ("category", |r| r.category = 99),
        ("role", |r| r.role = 99),
    ];
    for (field, mutate) in cases {
        let mut req = move_in(2);
        mutate(&mut req);
        match f.registry.move_in(&req) {
            Err(RegistryError::Invalid(e)) => assert_eq!(e.field, field, "{e}"),
            other => panic!("{field}: expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(snapshot(&f.store), before, "{field}: store changed");
    }
}

#[test]
fn move_out_and_services() {
    let f = fixture();
    let id = move_in(1).id_number;
    f.registry.move_in(&move_in(1)).unwrap();
    let service = |date: &str| pb::RecordServiceRequest {
        id_number: id.clone(),
        kind: pb::ServiceKind::HealthCheck as i32,
        date: date.into(),
        details: "常规检查".into(),
    };
    f.registry.record_service(&service("2026-07-08")).unwrap();
    f.registry.record_service(&service("2026-04-08")).unwrap();
    let p = f.registry.record_service(&service("2026-04-08")).unwrap();
    assert_eq!(p.services.iter().map(|s| s.date.as_str()).collect::<Vec<_>>(), ["2026-04-08", "2026-07-08"]);
    let err = f.registry.record_service(&service("2026-02-01")).unwrap_err();
    assert!(err.to_string().contains("before her move-in"), "{err}");

    let out = |date: &str| pb::RegisterMoveOutRequest {
        id_number: id.clone(),
        date: date.into(),
        next_division: "410102001".into(),
    };
    assert!(matches!(f.registry.move_out(&out("2026-01-01")), Err(RegistryError::Invalid(_))));
    let p = f.registry.move_out(&out("2026-10-15")).unwrap();
    assert_eq!(p.status, pb::PersonStatus::MovedOut as i32);
    assert_eq!(p.move_out_date, "2026-10-15");
    assert_eq!(p.next_division, "410102001");
    assert_eq!(f.registry.move_out(&out("2026-10-15")).unwrap(), p);
    assert!(matches!(f.registry.move_out(&out("2026-10-16")), Err(RegistryError::MovedOut { .. })));
    assert!(matches!(f.registry.record_service(&service("2026-10-20")), Err(RegistryError::MovedOut { .. })));

    // Moving in again starts a new registration and keeps her service history.
    let mut back = move_in(1);
    back.date = "2026-11-01".into();
    let (p, created) = f.registry.move_in(&back).unwrap();
    assert!(created);
    assert_eq!(p.status, pb::PersonStatus::Active as i32);
    assert_eq!(p.services.len(), 2);
}

#[test]
fn unknown_person_is_not_found() {
    let f = fixture();
    let err = f.registry.get(&pb::GetPersonRequest { id_number: move_in(5).id_number }).unwrap_err();
    assert!(matches!(err, RegistryError::NotFound));
}

#[test]
fn list_filters_and_pages_through_everyone_once() {
    let f = fixture();
    for n in 0..25 {
        let mut req = move_in(n);
        if n % 5 == 0 {
            req.role = pb::Role::Workplace as i32;
            req.category = pb::Category::Organisation as i32;
        }
        f.registry.move_in(&req).unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let pb::ListPersonsResponse { persons: page, next_page_token: next, unreadable } = f
            .registry
            .list(&pb::ListPersonsRequest { page_size: 7, page_token: token.clone(), ..Default::default() })
            .unwrap();
        assert_eq!(unreadable, 0);
        assert!(page.len() <= 7);
        seen.extend(page.into_iter().map(|p| p.name));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25);

    let pb::ListPersonsResponse { persons: workplace, next_page_token: next, .. } =
        f.registry.list(&pb::ListPersonsRequest { role: pb::Role::Workplace as i32, ..Default::default() }).unwrap();
    assert_eq!(workplace.len(), 5);
    assert!(next.is_empty());
    assert!(workplace.iter().all(|p| p.category == pb::Category::Organisation as i32));

    let err = f.registry.list(&pb::ListPersonsRequest { page_size: 5000, ..Default::default() }).unwrap_err();
    assert!(err.to_string().starts_with("page_size"), "{err}");
    let err = f.registry.list(&pb::ListPersonsRequest { page_token: "zz".into(), ..Default::default() }).unwrap_err();
    assert!(err.to_string().starts_with("page_token"), "{err}");
    let err = f.registry.list(&pb::ListPersonsRequest { status: 9, ..Default::default() }).unwrap_err();
    assert!(err.to_string().starts_with("status"), "{err}");
}

#[test]
fn every_access_is_audited_in_an_unbroken_chain() {
    let f = fixture();
    f.registry.move_in(&move_in(1)).unwrap();
    f.registry.move_in(&move_in(1)).unwrap();
    f.registry.get(&pb::GetPersonRequest { id_number: move_in(1).id_number }).unwrap();
    f.registry.list(&pb::ListPersonsRequest::default()).unwrap();
    assert_eq!(verify_audit_chain(&f.store).unwrap(), 4);
    let actions: Vec<_> = f.store.audit_entries().map(|e| e.unwrap().1.unwrap().action).collect();
    assert_eq!(actions, ["move_in", "move_in_repeat", "read", "list"]);
}

#[test]
fn records_do_not_open_under_another_key() {
    let f = fixture();
    f.registry.move_in(&move_in(1)).unwrap();
    let (key, record) = f.store.persons_after(None).next().unwrap().unwrap();
    let other = DataKey::from_bytes(&[9; 32]);
    assert!(other.open(&PersonRecordKey(key).encode(), &record.sealed).is_err());
}

fn registry_with_key(store: &Arc<Store>, key: u8) -> Result<Registry, StorageError> {
    let clock = Arc::new(ManualClock::new("2026-11-23T02:00:00Z".parse().unwrap()));
    Registry::new(
        store.clone(),
        DataKey::from_bytes(&[key; 32]),
        FederationSalt::from_bytes([4; 32]),
        clock,
        Division::parse("division", "410103007").unwrap(),
    )
}

#[test]
fn a_store_refuses_any_data_key_but_its_own() {
    let f = fixture();
    f.registry.move_in(&move_in(1)).unwrap();
    let before = snapshot(&f.store);
    let err = registry_with_key(&f.store, 9).unwrap_err();
    assert!(matches!(err, StorageError::WrongDataKey { .. }), "{err}");
    assert!(err.to_string().starts_with("data_key_file is not the data key"), "{err}");
    assert_eq!(snapshot(&f.store), before, "a refused key writes nothing");
    registry_with_key(&f.store, 3).expect("its own key opens it");

    // A store written before check values were kept: its records decide, and the right
    // key then gets its check value stored.
    f.store.delete_meta(MetaKey::DataKeyCheck).unwrap();
    let err = registry_with_key(&f.store, 9).unwrap_err();
    assert!(err.to_string().contains("none of the first stored records opens with it"), "{err}");
    assert_eq!(f.store.meta(MetaKey::DataKeyCheck).unwrap(), None);
    registry_with_key(&f.store, 3).unwrap();
    assert!(f.store.meta(MetaKey::DataKeyCheck).unwrap().is_some());
    assert!(matches!(registry_with_key(&f.store, 9), Err(StorageError::WrongDataKey { .. })));
}

#[test]
fn a_record_that_does_not_open_is_left_out_of_the_list_and_counted() {
    let f = fixture();
    for n in 1..=5 {
        f.registry.move_in(&move_in(n)).unwrap();
    }
    let key = f.registry.salt.person_key(&move_in(3).id_number);
    let mut record = f.store.person(&key).unwrap().unwrap();
    record.sealed[20] ^= 1;
    let mut batch = f.store.batch();
    batch.put_person(&key, &record);
    batch.commit().unwrap();

    let page = f.registry.list(&pb::ListPersonsRequest::default()).unwrap();
    assert_eq!(page.unreadable, 1);
    let mut names: Vec<_> = page.persons.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["测试1", "测试2", "测试4", "测试5"]);
    // The record itself still says so when asked for.
    let err = f.registry.get(&pb::GetPersonRequest { id_number: move_in(3).id_number }).unwrap_err();
    assert!(matches!(err, RegistryError::Sealed(_)), "{err}");
}

#[test]
fn a_batch_of_move_ins_answers_each_in_order_and_stores_the_valid_ones() {
    let f = fixture();
    f.registry.move_in(&move_in(1)).unwrap();
    let mut bad_id = move_in(3);
    bad_id.id_number = "41142119900101003X".into();
    let mut changed = move_in(1);
    changed.address = "别处".into();
    let batch = [move_in(2), bad_id, move_in(1), changed, move_in(4), move_in(4)];
    let before = f.store.audit_head().unwrap().seq;
    let results = f.registry.move_ins(&batch).unwrap();
    assert_eq!(results.len(), batch.len());
    assert!(matches!(&results[0], Ok((p, true)) if p.name == "测试2"));
    match &results[1] {
        Err(RegistryError::Invalid(e)) => assert!(e.to_string().starts_with("id_number:"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(&results[2], Ok((_, false))), "the same move-in again is a repeat");
    assert!(matches!(&results[3], Err(RegistryError::AlreadyRegistered { .. })), "{:?}", results[3]);
    assert!(matches!(&results[4], Ok((_, true))));
    assert!(matches!(&results[5], Ok((_, false))), "the same person twice in one batch is stored once");
    assert_eq!(f.store.persons_after(None).count(), 3);
    // One audit entry per answered item: move_in, move_in_repeat, move_in, move_in_repeat.
    assert_eq!(f.store.audit_head().unwrap().seq, before + 4);
    assert_eq!(crate::registry::verify_audit_chain(&f.store).unwrap(), before + 4);
}

#[test]
fn a_batch_over_the_limit_is_refused_whole() {
    let f = fixture();
    let before = snapshot(&f.store);
    let batch: Vec<_> = (0..=MOVE_INS_MAX as u32).map(|n| move_in(n % 1000)).collect();
    let err = f.registry.move_ins(&batch).unwrap_err();
    assert_eq!(err.to_string(), "move_ins: 1001 must hold at most 1000 move-ins");
    assert_eq!(snapshot(&f.store), before);
}

fn staff_fixture() -> (Fixture, ManualClock) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), "410103007", false).unwrap());
    let clock = ManualClock::new("2026-11-23T02:00:00Z".parse().unwrap());
    let registry = Registry::new(
        store.clone(),
        DataKey::from_bytes(&[3; 32]),
        FederationSalt::from_bytes([4; 32]),
        Arc::new(clock.clone()),
        Division::parse("division", "410103007").unwrap(),
    )
    .unwrap();
    (Fixture { _dir: dir, store, registry }, clock)
}

fn new_staff(name: &str, role: &str) -> NewStaff {
    NewStaff {
        name: name.into(),
        roles: vec![role.into()],
        password: "a long enough password".into(),
        ..Default::default()
    }
}

#[test]
fn a_session_expires_ends_on_logout_disable_and_reset_and_bad_accounts_are_refused_by_field() {
    let (f, clock) = staff_fixture();
    let r = &f.registry;
    r.staff_add(&new_staff("li.na", "registrar")).unwrap();
    let err = r.staff_add(&new_staff("li.na", "verifier")).unwrap_err();
    assert_eq!(err.to_string(), "name: a staff account \"li.na\" already exists at this node");
    for (bad, message) in [
        (NewStaff { roles: vec!["clerk".into()], ..new_staff("wang", "x") }, "role: \"clerk\" is not a role"),
        (NewStaff { password: "short".into(), ..new_staff("wang", "registrar") }, "password: \"(5 characters)\""),
        (new_staff("Wang", "registrar"), "name: \"Wang\" must be 2 to 32 characters"),
        (new_staff("wang", "township-clerk"), "township: \"\" is required for the township-clerk role"),
        (
            NewStaff { township: "411421001".into(), ..new_staff("wang", "township-clerk") },
            "township: \"411421001\" must be a 9-digit township within this node's division 410103007",
        ),
        (NewStaff { deputy_of: "nobody".into(), ..new_staff("wang", "registrar") }, "deputy_of: \"nobody\""),
    ] {
        let err = r.staff_add(&bad).unwrap_err().to_string();
        assert!(err.starts_with(message), "{err}");
    }

    let (token, _, _) = r.login("li.na", "a long enough password", "127.0.0.1").unwrap();
    assert_eq!(r.session(&token).unwrap().account.name, "li.na");
    clock.set("2026-11-23T12:00:01Z".parse().unwrap());
    assert!(matches!(r.session(&token), Err(StaffError::Expired(_))), "a session lasts 10 hours");

    let (token, _, _) = r.login("li.na", "a long enough password", "127.0.0.1").unwrap();
    r.logout(&r.session(&token).unwrap().id).unwrap();
    assert!(matches!(r.session(&token), Err(StaffError::SessionEnded)));

    let (token, _, _) = r.login("li.na", "a long enough password", "127.0.0.1").unwrap();
    r.staff_update("li.na", StaffChange::Reset, "another long password").unwrap();
    assert!(matches!(r.session(&token), Err(StaffError::SessionEnded)));
    assert!(matches!(r.login("li.na", "a long enough password", "x"), Err(StaffError::BadLogin)));
    let (token, _, _) = r.login("li.na", "another long password", "127.0.0.1").unwrap();
    r.staff_update("li.na", StaffChange::Disable, "").unwrap();
    assert!(matches!(r.session(&token), Err(StaffError::SessionEnded)));
    assert!(matches!(r.login("li.na", "another long password", "x"), Err(StaffError::Disabled(_))));
    r.staff_update("li.na", StaffChange::Enable, "").unwrap();
    assert!(r.login("li.na", "another long password", "x").is_ok());
}

#[test]
fn five_wrong_passwords_lock_the_account_for_a_while_and_every_attempt_is_audited() {
    let (f, clock) = staff_fixture();
    let r = &f.registry;
    r.staff_add(&new_staff("li.na", "registrar")).unwrap();
    let before = f.store.audit_head().unwrap().seq;
    for _ in 0..LOGIN_FAILURES_MAX {
        assert!(matches!(r.login("li.na", "wrong guess", "10.0.0.9"), Err(StaffError::BadLogin)));
    }
    let err = r.login("li.na", "a long enough password", "10.0.0.9").unwrap_err();
    assert!(err.to_string().starts_with("account \"li.na\" is locked after 5 failed log-ins until"), "{err}");
    assert!(matches!(r.login("nobody", "x", "10.0.0.9"), Err(StaffError::BadLogin)));
    let entries: Vec<_> = f.store.audit_after(before).map(Result::unwrap).collect();
    assert_eq!(entries.len(), 7);
    assert!(entries.iter().all(|e| e.action == "login_failed" && e.detail.contains("10.0.0.9")), "{entries:?}");
    assert!(entries[4].detail.contains("locked until"), "{:?}", entries[4]);
    assert!(entries[6].detail.starts_with("no such account"));
    clock.set("2026-11-23T02:16:00Z".parse().unwrap());
    assert!(r.login("li.na", "a long enough password", "10.0.0.9").is_ok(), "the lock lifts after 15 minutes");
}
