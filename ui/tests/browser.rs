//! The dashboard in a real browser: headless Chromium driven over
//! WebDriver (chromedriver), against the three real daemons on loopback.
//! What is asserted is the rendered DOM after htmx and the SSE extension
//! ran: what an operator sees. Screenshots of the pages are left under
//! `target/ui-browser/` as artefacts.
//!
//! Skipped with a message where chromium, chromedriver or SIPp are missing;
//! under CI (`CI` set), where `cargo xtask setup` installs them, that is a
//! failure.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::webdriver::{browser_tools, Driver, Session};
use common::{artefacts_dir, free_port, tool, wait_exit, System, TOKEN};
use serde_json::json;

/// One browser and one set of daemons at a time: the machine is small.
static SERIAL: Mutex<()> = Mutex::new(());

const XSS: &str = "<script>alert(1)</script>";

/// No script error and no Content-Security-Policy violation in the
/// console: htmx and the SSE extension run under `script-src 'self'`.
fn assert_clean_console(browser: &Session) {
    let console = browser.console();
    let bad: Vec<&String> = console
        .iter()
        .filter(|m| m.contains("SEVERE") || m.contains("Content Security Policy"))
        .collect();
    assert!(bad.is_empty(), "console: {console:#?}");
}

fn log_in(browser: &Session, system: &System) {
    browser.goto(&system.ui_url("/"));
    assert!(
        browser.current_url().ends_with("/login"),
        "a new browser is sent to the login"
    );
    browser.type_into("#token", TOKEN);
    browser.click("#login");
    browser.wait_for(
        "the overview after login",
        Duration::from_secs(5),
        "return document.querySelector('#total-calls') !== null",
    );
}

/// The browser's cookie for the dashboard, as the page's script sees it:
/// an HttpOnly cookie is invisible to it.
fn cookie_visible_to_scripts(browser: &Session) -> String {
    browser
        .script("return document.cookie", json!([]))
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn registrations_and_managers_are_steered_from_a_real_browser() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let system = System::start();
    system.wait_manager_healthy();
    system.register("2001", XSS);
    system.register("2002", "Linphone/5.2");

    let driver = Driver::start(&chromedriver, free_port());
    let browser = driver.session(&chromium);
    log_in(&browser, &system);
    assert_eq!(
        cookie_visible_to_scripts(&browser),
        "",
        "the session cookie is HttpOnly"
    );
    let shots = artefacts_dir();
    browser.wait_for(
        "two registrations on the overview",
        Duration::from_secs(5),
        "return document.querySelector('#total-registrations').textContent === '2'",
    );
    browser.screenshot(&shots.join("overview.png"));

    // Registrations: the user agent that is a script shows as text.
    browser.goto(&system.ui_url("/registrations"));
    let rows = browser.wait_for(
        "both registrations listed",
        Duration::from_secs(5),
        "const rows = [...document.querySelectorAll('#registrations-table tr.registration')]
           .map(r => [r.querySelector('.aor').textContent, r.querySelector('.user-agent').textContent]);
         return rows.length === 2 ? rows : null;",
    );
    assert!(
        rows.as_array()
            .expect("rows")
            .contains(&json!(["2001@127.0.0.1", XSS])),
        "{rows}"
    );
    let scripts = browser.script(
        "return document.querySelectorAll('#registrations-table script').length",
        json!([]),
    );
    assert_eq!(
        scripts,
        json!(0),
        "no script element made of the user agent"
    );
    assert_eq!(browser.alert_text(), None, "no alert ran");
    browser.screenshot(&shots.join("registrations.png"));

    // A phone registering while the page is open appears without a reload
    // (the backend's registration_added event, then the pushed table).
    system.register("2003", "Grandstream GXP");
    browser.wait_for(
        "2003 pushed into the open page",
        Duration::from_secs(2),
        "return [...document.querySelectorAll('#registrations-table td.aor')].some(c => c.textContent === '2003@127.0.0.1')",
    );

    // Filter by AOR as the operator types.
    browser.type_into("#aor", "2002");
    browser.wait_for(
        "the filter leaves 2002 alone",
        Duration::from_secs(5),
        "const aors = [...document.querySelectorAll('#registrations-table td.aor')].map(c => c.textContent);
         return aors.length === 1 && aors[0] === '2002@127.0.0.1';",
    );

    // Unregister 2001 with the confirmation.
    browser.goto(&system.ui_url("/registrations?aor=2001"));
    browser.click("button.unregister");
    let confirm = browser.accept_confirm();
    assert!(confirm.contains("2001@127.0.0.1"), "{confirm}");
    browser.wait_for(
        "2001 gone from the table",
        Duration::from_secs(5),
        "return document.querySelector('.flash.ok') !== null
             && document.querySelectorAll('#registrations-table tr.registration').length === 0",
    );
    let (status, _) = system.api("GET", "/api/v1/registrations/2001@127.0.0.1");
    assert_eq!(status, 404, "the backend unregistered it");
    let (status, _) = system.api("GET", "/api/v1/registrations/2002@127.0.0.1");
    assert_eq!(status, 200, "the other bindings stay");

    // Drain and undrain the manager, each confirmed.
    browser.goto(&system.ui_url("/managers"));
    browser.click("tr.manager[data-manager='sb-manager'] button.drain");
    let confirm = browser.accept_confirm();
    assert!(confirm.starts_with("Drain sb-manager?"), "{confirm}");
    browser.wait_for(
        "the manager shown drained",
        Duration::from_secs(5),
        "return document.querySelector(\"tr.manager[data-manager='sb-manager'] .drain-state\").textContent === 'drained by operator'",
    );
    let (_, drain) = system.api("GET", "/api/v1/rtpmanagers/sb-manager/drain");
    assert_eq!(drain["operator"], true, "{drain}");
    browser.screenshot(&shots.join("managers.png"));
    browser.click("tr.manager[data-manager='sb-manager'] button.undrain");
    browser.accept_confirm();
    browser.wait_for(
        "the manager shown undrained",
        Duration::from_secs(5),
        "return document.querySelector(\"tr.manager[data-manager='sb-manager'] .drain-state\").textContent === ''",
    );
    let (_, drain) = system.api("GET", "/api/v1/rtpmanagers/sb-manager/drain");
    assert_eq!(drain["operator"], false, "{drain}");

    assert_clean_console(&browser);

    // On a phone's width the page does not scroll sideways: wide tables
    // scroll inside their own box.
    browser.resize(390, 844);
    for page in ["/", "/registrations", "/managers"] {
        browser.goto(&system.ui_url(page));
        let overflow = browser.script(
            "return document.documentElement.scrollWidth - window.innerWidth",
            json!([]),
        );
        assert!(
            overflow.as_i64().is_some_and(|o| o <= 0),
            "{page} is {overflow} px wider than a phone"
        );
    }
    browser.screenshot(&shots.join("managers-phone.png"));
}

/// `m:ss` or `h:mm:ss` to seconds.
fn seconds(label: &str) -> u64 {
    label.trim().split(':').fold(0, |total, part| {
        total * 60 + part.parse::<u64>().unwrap_or(0)
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn a_sipp_call_is_watched_read_as_a_ladder_and_hung_up_from_a_real_browser() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((chromium, chromedriver)) = browser_tools() else {
        return;
    };
    let Some(sipp) = tool("sipp") else {
        return;
    };
    let system = System::start();
    system.wait_manager_healthy();
    let (status, _) = system.api("GET", "/api/v1/calls");
    if status == 404 {
        assert!(
            std::env::var_os("CI").is_none(),
            "the signaling server has no calls API (#11)"
        );
        eprintln!("SKIPPED: this signaling server has no /api/v1/calls yet (#11)");
        return;
    }

    let driver = Driver::start(&chromedriver, free_port());
    let browser = driver.session(&chromium);
    log_in(&browser, &system);
    browser.goto(&system.ui_url("/calls"));
    browser.wait_for(
        "the calls page connected",
        Duration::from_secs(5),
        "return document.querySelector('#calls-count') !== null",
    );
    let shots = artefacts_dir();

    let callee = system.sipp(
        &sipp,
        "callee_waits_for_bye.xml",
        system.callee_port,
        &["-key", "rtp_b", &free_port().to_string()],
    );
    std::thread::sleep(Duration::from_millis(300));
    let target = format!("127.0.0.1:{}", system.sip_port);
    // The caller's media socket: the test sends its RTP.
    let media = std::net::UdpSocket::bind("127.0.0.1:0").expect("media socket");
    let rtp_a = media.local_addr().expect("address").port().to_string();
    let caller = system.sipp(
        &sipp,
        "caller_xss_waits_for_bye.xml",
        free_port(),
        &["-s", "1001", "-key", "rtp_a", &rtp_a, &target],
    );

    // The row appears, with both legs, while the page is left alone.
    let row = browser.wait_for(
        "the call row with both legs",
        Duration::from_secs(10),
        "const call = document.querySelector('tbody.call');
         if (!call || call.querySelectorAll('tr.leg[data-leg]').length !== 2) return null;
         return {id: call.dataset.callId, caller: call.querySelector('.caller').textContent,
                 legs: [...call.querySelectorAll('tr.leg[data-leg]')].map(l => l.dataset.leg)};",
    );
    let seen_at = now_ms();
    let id = row["id"].as_str().expect("a call id").to_owned();
    let (_, call) = system.api("GET", &format!("/api/v1/calls/{id}"));
    let started = call["started_at_ms"].as_u64().expect("started_at_ms");
    eprintln!(
        "the call row showed {} ms after the INVITE reached signaling",
        seen_at.saturating_sub(started)
    );
    assert!(
        seen_at.saturating_sub(started) < 1000,
        "the row took {} ms to show",
        seen_at.saturating_sub(started)
    );
    assert_eq!(row["legs"], json!(["a", "b"]), "{row}");
    assert!(
        row["caller"].as_str().is_some_and(|c| c.starts_with(XSS)),
        "the display name renders as text: {row}"
    );
    let scripts = browser.script(
        "return document.querySelectorAll('#calls-table script').length",
        json!([]),
    );
    assert_eq!(
        scripts,
        json!(0),
        "no script element made of the display name"
    );
    assert_eq!(browser.alert_text(), None, "no alert ran");

    // The caller's RTP shows in leg a's packet count, pushed by the next poll.
    let relay = call["legs"]
        .as_array()
        .and_then(|legs| legs.iter().find(|l| l["leg"] == "a"))
        .and_then(|l| l["local_address"].as_str())
        .unwrap_or_else(|| panic!("leg a's relay address: {call}"))
        .to_owned();
    for seq in 0..50u16 {
        let mut packet = vec![0x80, 0x00];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        packet.extend_from_slice(&[0xff; 160]);
        media.send_to(&packet, &relay).expect("send RTP");
        std::thread::sleep(Duration::from_millis(5));
    }
    let packets = browser.wait_for(
        "leg a's packets in the table",
        Duration::from_secs(5),
        "const cell = document.querySelector('tbody.call tr.leg[data-leg=a] .packets');
         return cell && !cell.textContent.startsWith('0/') ? cell.textContent : null;",
    );
    eprintln!("leg a packets in/out on the page: {packets}");

    // Its duration ticks on, between pushes too.
    let first = browser.script(
        "return document.querySelector('tbody.call .duration').textContent",
        json!([]),
    );
    // The page's script refreshes the text every half second: 3.5 s of
    // wall time show at least 2 s more even read at the worst moments.
    std::thread::sleep(Duration::from_millis(3500));
    let later = browser.script(
        "return document.querySelector('tbody.call .duration').textContent",
        json!([]),
    );
    let (first, later) = (
        seconds(first.as_str().unwrap_or_default()),
        seconds(later.as_str().unwrap_or_default()),
    );
    assert!(later >= first + 2, "duration {first} s then {later} s");
    browser.screenshot(&shots.join("calls.png"));
    browser.resize(390, 844);
    let overflow = browser.script(
        "return document.documentElement.scrollWidth - window.innerWidth",
        json!([]),
    );
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "the calls page is {overflow} px wider than a phone"
    );
    browser.screenshot(&shots.join("calls-phone.png"));
    browser.resize(1280, 900);

    browser.goto(&system.ui_url("/"));
    browser.wait_for(
        "the call counted on the overview",
        Duration::from_secs(5),
        "return document.querySelector('#total-calls').textContent === '1'",
    );
    browser.screenshot(&shots.join("overview-call.png"));

    // The ladder lists INVITE, 100, 180, 200, ACK in that order.
    browser.goto(&system.ui_url(&format!("/calls/sb1/{id}")));
    let lines = browser.wait_for(
        "the ladder",
        Duration::from_secs(5),
        "return [...document.querySelectorAll('#ladder text.first-line')].map(t => t.firstChild.textContent)",
    );
    let lines: Vec<String> = lines
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect();
    let position = |what: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(what) || l.contains(&format!(" {what} ")))
            .unwrap_or_else(|| panic!("no {what} in the ladder: {lines:?}"))
    };
    let order = ["INVITE", "100", "180", "200", "ACK"].map(position);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{order:?} in {lines:?}"
    );
    assert!(
        browser
            .script(
                "return document.querySelector('.caller').textContent",
                json!([])
            )
            .as_str()
            .is_some_and(|c| c.starts_with(XSS)),
        "escaped on the call page too"
    );
    browser.script(
        "document.querySelector('#ladder').scrollIntoView()",
        json!([]),
    );
    browser.screenshot(&shots.join("ladder.png"));

    // Hang up from the live calls table: SIPp gets its BYE and exits 0,
    // and the row leaves the table that stayed open.
    browser.goto(&system.ui_url("/calls"));
    browser.wait_for(
        "the call row again",
        Duration::from_secs(5),
        "return document.querySelector('tbody.call button.hangup') !== null",
    );
    browser.click("tbody.call button.hangup");
    assert_eq!(browser.accept_confirm(), "Hang up this call?");
    let hung_up = Instant::now();
    let caller = wait_exit(caller, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the SIPp caller got no BYE:\n{}", system.logs()));
    let bye_answered = Instant::now();
    assert_eq!(
        caller.status.code(),
        Some(0),
        "SIPp caller:\n{}\n{}",
        String::from_utf8_lossy(&caller.stdout),
        system.logs()
    );
    let callee = wait_exit(callee, Duration::from_secs(15)).expect("the SIPp callee got its BYE");
    assert_eq!(callee.status.code(), Some(0), "SIPp callee");
    browser.wait_for(
        "the call gone from the live table",
        Duration::from_secs(1),
        "return document.querySelector('#calls-count') !== null && document.querySelectorAll('tbody.call').length === 0",
    );
    eprintln!(
        "the SIPp caller had its BYE {} ms after the hang-up click; the row left the open page {} ms after that",
        bye_answered.duration_since(hung_up).as_millis(),
        bye_answered.elapsed().as_millis()
    );
    assert_eq!(browser.alert_text(), None, "no alert ran");
    assert_clean_console(&browser);
}
