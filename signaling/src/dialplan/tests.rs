use super::*;

fn plan(routes: &str) -> Dialplan {
    Dialplan::parse(&format!(r#"{{"version":"1.0","routes":[{routes}]}}"#)).expect("valid plan")
}

fn err(routes: &str) -> String {
    Dialplan::parse(&format!(r#"{{"version":"1.0","routes":[{routes}]}}"#))
        .expect_err("invalid plan")
        .to_string()
}

const HANGUP: &str = r#"[{"type":"hangup","params":{"code":404}}]"#;

#[test]
fn the_shipped_demo_plan_is_valid_and_routes_as_documented() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/demo/dialplan.json"
    ))
    .expect("demo dialplan");
    let plan = Dialplan::parse(&text).expect("demo plan validates");
    assert_eq!(
        plan.route("9000").map(|r| r.id.as_str()),
        Some("announcement")
    );
    assert_eq!(
        plan.route("1001").map(|r| r.id.as_str()),
        Some("extensions")
    );
    assert_eq!(plan.route("5555").map(|r| r.id.as_str()), Some("unknown"));
    let unknown = plan.route("5555").expect("catch-all");
    assert_eq!(
        unknown.actions,
        vec![Action::Hangup {
            code: 404,
            reason: "Not Found".into()
        }]
    );
    let dial = plan.route("1001").expect("extension").actions[0].with_vars(&CallVars {
        destination: "1001",
        ..Default::default()
    });
    assert_eq!(
        dial,
        Action::Dial {
            targets: vec![Target::User("1001".into())],
            timeout: Duration::from_secs(30),
            ring: Ring::Parallel,
            media_interface: None,
            max_redirects: 3,
            allow_transfer: false
        }
    );
}

#[test]
fn priority_then_specificity_then_file_order() {
    let p = plan(&format!(
        r#"{{"id":"all","pattern":"*","priority":10,"actions":{HANGUP}}},
           {{"id":"prefix","pattern":"1*","priority":10,"actions":{HANGUP}}},
           {{"id":"map","pattern":"1XXX","priority":10,"actions":{HANGUP}}},
           {{"id":"exact","pattern":"1000","priority":10,"actions":{HANGUP}}},
           {{"id":"urgent","pattern":"1*","priority":1,"actions":{HANGUP}}},
           {{"id":"twin","pattern":"2XXX","priority":10,"actions":{HANGUP}}},
           {{"id":"twin2","pattern":"2XXX","priority":10,"actions":{HANGUP}}},
           {{"id":"off","pattern":"3000","enabled":false,"actions":{HANGUP}}}"#
    ));
    assert_eq!(
        p.route("1000").map(|r| r.id.as_str()),
        Some("urgent"),
        "lower priority value first"
    );
    assert_eq!(
        p.route("2000").map(|r| r.id.as_str()),
        Some("twin"),
        "file order breaks ties"
    );
    assert_eq!(
        p.route("3000").map(|r| r.id.as_str()),
        Some("all"),
        "disabled routes never match"
    );
    assert_eq!(p.routes().len(), 7);

    let p = plan(&format!(
        r#"{{"id":"all","pattern":"*","actions":{HANGUP}}},
           {{"id":"prefix","pattern":"1*","actions":{HANGUP}}},
           {{"id":"map","pattern":"1XXX","actions":{HANGUP}}},
           {{"id":"exact","pattern":"1000","actions":{HANGUP}}}"#
    ));
    assert_eq!(p.route("1000").map(|r| r.id.as_str()), Some("exact"));
    assert_eq!(p.route("1001").map(|r| r.id.as_str()), Some("map"));
    assert_eq!(p.route("10011").map(|r| r.id.as_str()), Some("prefix"));
    assert_eq!(p.route("alice").map(|r| r.id.as_str()), Some("all"));
}

#[test]
fn invalid_plans_name_route_and_field() {
    assert_eq!(
        err(r#"{"id":"r1","pattern":"1[2","actions":[{"type":"answer"}]}"#),
        "dialplan route `r1`: pattern: unclosed `[` at position 1"
    );
    assert_eq!(
        err(r#"{"id":"r1","pattern":"1","actions":[{"type":"teleport"}]}"#),
        "dialplan route `r1`: actions[0].type: unknown action `teleport` (known: answer, dial, play_audio, hangup, set_caller_id)"
    );
    assert!(
        err(r#"{"id":"r1","pattern":"1","actions":[{"type":"dial","params":{}}]}"#)
            .starts_with("dialplan route `r1`: actions[0].params.targets: missing")
    );
    assert_eq!(
        err(r#"{"id":"r1","pattern":"1","actions":[{"type":"dial","params":{"targets":["ftp://x"]}}]}"#),
        "dialplan route `r1`: actions[0].params.targets: `ftp://x` is neither user/<name> nor a sip: URI"
    );
    assert_eq!(
        err(r#"{"id":"r1","pattern":"1","actions":[{"type":"hangup","params":{"code":99}}]}"#),
        "dialplan route `r1`: actions[0].params.code: must be a SIP status between 200 and 699"
    );
    assert_eq!(
        err(r#"{"id":"r1","pattern":"1","actions":[{"type":"play_audio","params":{"files":["${nope}.wav"]}}]}"#),
        "dialplan route `r1`: actions[0].params.files: unknown variable `${nope}` (known: destination, caller_id, caller_name, call_id)"
    );
    assert_eq!(
        err(r#"{"pattern":"1","actions":[{"type":"answer"}]}"#),
        "dialplan route `#1`: id: missing"
    );
    assert_eq!(
        err(r#"{"id":"a","pattern":"1","actions":[]}"#),
        "dialplan route `a`: actions: a route needs at least one action"
    );
    assert_eq!(
        err(
            r#"{"id":"a","pattern":"1","actions":[{"type":"answer"}]},{"id":"a","pattern":"2","actions":[{"type":"answer"}]}"#
        ),
        "dialplan route `a`: id: used by an earlier route"
    );
    assert!(matches!(
        Dialplan::parse("{"),
        Err(DialplanError::Syntax(_))
    ));
    assert!(matches!(
        Dialplan::parse(r#"{"version":"2.0","routes":[]}"#),
        Err(DialplanError::Version(v)) if v == "2.0"
    ));
}

#[test]
fn variables_are_substituted_into_values_never_into_json() {
    let vars = CallVars {
        destination: "1001",
        caller_id: "\"},{\"type\":\"hangup",
        caller_name: "Alice",
        call_id: "abc@host",
    };
    assert_eq!(substitute("user/${destination}", &vars), "user/1001");
    assert_eq!(
        substitute("${caller_name} <${caller_id}>", &vars),
        "Alice <\"},{\"type\":\"hangup>"
    );
    assert_eq!(
        substitute("${call_id}-${unknown}-${", &vars),
        "abc@host-${unknown}-${"
    );
    let p = plan(
        r#"{"id":"cid","pattern":"*","actions":[{"type":"set_caller_id","params":{"number":"${caller_id}"}}]}"#,
    );
    let action = p.route("x").expect("route").actions[0].with_vars(&vars);
    assert_eq!(
        action,
        Action::SetCallerId {
            number: Some("\"},{\"type\":\"hangup".into()),
            name: None
        },
        "a hostile caller id stays a value"
    );
}

#[test]
fn dial_options_and_seed_spellings() {
    let p = plan(
        r#"{"id":"d","pattern":"*","actions":[
            {"type":"dial","params":{"targets":["user/1001","sip:bob@example.com"],"timeout":12,"strategy":"sequential"}},
            {"type":"playback","params":{"file":"busy.wav"}},
            {"type":"hangup"}]}"#,
    );
    let actions = &p.route("x").expect("route").actions;
    assert_eq!(
        actions[0],
        Action::Dial {
            targets: vec![
                Target::User("1001".into()),
                Target::Uri("sip:bob@example.com".into())
            ],
            timeout: Duration::from_secs(12),
            ring: Ring::Sequential,
            media_interface: None,
            max_redirects: 3,
            allow_transfer: false
        }
    );
    assert_eq!(
        actions[1],
        Action::PlayAudio {
            files: vec!["busy.wav".into()]
        }
    );
    assert_eq!(
        actions[2],
        Action::Hangup {
            code: 486,
            reason: "Busy Here".into()
        }
    );
}

#[test]
fn a_dial_action_may_name_the_callees_media_interface() {
    let p = plan(
        r#"{"id":"x","pattern":"*","actions":[
            {"type":"dial","params":{"targets":["user/1001"],"media_interface":"private"}}]}"#,
    );
    match &p.route("1").expect("route").actions[0] {
        Action::Dial {
            media_interface, ..
        } => assert_eq!(media_interface.as_deref(), Some("private")),
        other => panic!("not a dial: {other:?}"),
    }
    for bad in [r#""""#, r#""pri vate""#, "7"] {
        let text = format!(
            r#"{{"version":"1.0","routes":[{{"id":"x","pattern":"*","actions":[
                {{"type":"dial","params":{{"targets":["user/1001"],"media_interface":{bad}}}}}]}}]}}"#
        );
        let err = Dialplan::parse(&text).expect_err(bad);
        assert!(err.to_string().contains("media_interface"), "{bad}: {err}");
    }
}

#[test]
fn a_dial_action_bounds_the_redirects_it_follows() {
    let redirects = |params: &str| {
        let p = plan(&format!(
            r#"{{"id":"x","pattern":"*","actions":[
                {{"type":"dial","params":{{"targets":["user/1001"]{params}}}}}]}}"#
        ));
        match &p.route("1").expect("route").actions[0] {
            Action::Dial { max_redirects, .. } => *max_redirects,
            other => panic!("not a dial: {other:?}"),
        }
    };
    assert_eq!(redirects(""), 3, "followed by default");
    assert_eq!(redirects(r#","max_redirects":0"#), 0, "off");
    assert_eq!(redirects(r#","max_redirects":10"#), 10);
    for bad in ["11", "-1", r#""3""#, "1.5"] {
        let text = format!(
            r#"{{"version":"1.0","routes":[{{"id":"x","pattern":"*","actions":[
                {{"type":"dial","params":{{"targets":["user/1001"],"max_redirects":{bad}}}}}]}}]}}"#
        );
        let err = Dialplan::parse(&text).expect_err(bad);
        assert!(
            err.to_string().contains("params.max_redirects"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_dial_action_may_let_its_callee_transfer() {
    let p = plan(
        r#"{"id":"x","pattern":"*","actions":[
            {"type":"dial","params":{"targets":["sip:trunk@192.0.2.9"],"allow_transfer":true}}]}"#,
    );
    match &p.route("1").expect("route").actions[0] {
        Action::Dial { allow_transfer, .. } => assert!(*allow_transfer),
        other => panic!("not a dial: {other:?}"),
    }
    let text = r#"{"version":"1.0","routes":[{"id":"x","pattern":"*","actions":[
        {"type":"dial","params":{"targets":["user/1001"],"allow_transfer":"yes"}}]}]}"#;
    let error = Dialplan::parse(text)
        .expect_err("not a boolean")
        .to_string();
    assert!(error.contains("params.allow_transfer"), "{error}");
}
