//! The fdstore demo: a private systemd runs an HTTP server under
//! fdstore-exec; clients hammer it while it is reloaded again and again,
//! once with a broken configuration that must roll back. Run it with
//! `bash tests/demo` (as root), which builds everything first.
//!
//! Exits 0 when no request failed and every reload ended as expected.

// The integration tests' harness, of which the demo uses a part (the
// manager, the load, free ports): the rest is dead code here.
#[allow(dead_code)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fdstore::protocol::handover::parent_of;
use support::load::{Load, LoadReport, Mode};
use support::{free_port, Systemd, Version};

const RELOADS: usize = 8;
const BROKEN: usize = 5;
const CLIENTS_PER_MODE: usize = 4;

fn main() {
    let (fdstore_exec, server) = support::built_programs("demo", "tests/demo");

    println!("fdstore demo: zero-downtime reloads with fdstore-exec, under a private systemd\n");
    print!("[1/4] starting a private systemd 252 manager ... ");
    let sd = Systemd::start(Version::V252);
    println!("running (pid {})", sd.manager_pid());

    let port = free_port();
    let config = sd.path("hello.conf");
    set_config(&config, "hello from version 1");
    let unit = format!(
        "[Unit]\nDescription=fdstore demo: hello_http under fdstore-exec\n\n\
         [Service]\nType=notify\nFileDescriptorStoreMax=16\nKillMode=mixed\nTimeoutStartSec=30\n\
         ExecStart={fe} --listen http=tcp:127.0.0.1:{port} --ready-timeout 10s --drain-timeout 10s -- {server} --config {config}\n\
         ExecReload={fe} reload\n",
        fe = fdstore_exec.display(),
        server = server.display(),
        config = config.display(),
    );
    println!("[2/4] installing hello.service and starting it:\n");
    for line in unit.lines() {
        println!("      {line}");
    }
    sd.install(&[("hello.service", &unit)]);
    sd.ok(&["start", "hello.service"]);
    println!("\n      {}\n", sd.show("hello.service", "StatusText"));

    println!(
        "[3/4] {CLIENTS_PER_MODE} new-connection and {CLIENTS_PER_MODE} keep-alive clients on 127.0.0.1:{port}; \
         {RELOADS} reloads, one per second; reload {BROKEN} deploys a broken configuration\n"
    );
    let fresh = Load::start(port, Mode::NewConnection, CLIENTS_PER_MODE);
    let kept = Load::start(port, Mode::KeepAlive, CLIENTS_PER_MODE);
    let started = Instant::now();
    let progress = |what: &str| {
        let ok = fresh
            .counters()
            .ok
            .load(std::sync::atomic::Ordering::Relaxed)
            + kept
                .counters()
                .ok
                .load(std::sync::atomic::Ordering::Relaxed);
        let failed = fresh
            .counters()
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
            + kept
                .counters()
                .failed
                .load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "      t={:>5.1}s  requests {ok:>8}  failed {failed}  {what}",
            started.elapsed().as_secs_f64()
        );
    };
    let mut mains = vec![main_pid(&sd)];
    let mut handover_ms = Vec::new();
    let (mut done, mut failed_as_expected, mut surprises) = (0, 0, Vec::new());
    let mut reload_windows = Vec::new();
    std::thread::sleep(Duration::from_millis(1000));
    progress(&format!("serving: generation 1, main pid {}", mains[0]));
    for n in 1..=RELOADS {
        let broken = n == BROKEN;
        if broken {
            set_config(&config, "broken");
        } else {
            set_config(&config, &format!("hello from version {}", n + 1));
        }
        let t0 = Instant::now();
        let out = sd.systemctl(&["reload", "hello.service"]);
        let took = t0.elapsed();
        reload_windows.push((t0, Instant::now()));
        let main = main_pid(&sd);
        match (broken, out.status.success()) {
            (false, true) => {
                done += 1;
                handover_ms.push(took.as_secs_f64() * 1000.0);
                if parent_of(main) != Some(sd.manager_pid() as u32) {
                    surprises.push(format!(
                        "reload {n}: MainPID {main} is not the manager's child"
                    ));
                }
                mains.push(main);
                progress(&format!(
                    "reload {n}: handed over in {:.0} ms, main pid {main}",
                    took.as_secs_f64() * 1000.0
                ));
            }
            (true, false) => {
                failed_as_expected += 1;
                let status = sd.show("hello.service", "StatusText");
                progress(&format!(
                    "reload {n} (broken config): rolled back in {:.0} ms",
                    took.as_secs_f64() * 1000.0
                ));
                println!("                     STATUS: {status}");
                if main != *mains.last().unwrap() {
                    surprises.push(format!("reload {n}: the broken version became main"));
                }
            }
            (false, false) => {
                surprises.push(format!(
                    "reload {n} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                progress(&format!("reload {n}: FAILED"));
                // Why, as the journal says it: the manager's record is gone
                // with it when the demo ends.
                println!(
                    "                     STATUS: {}",
                    sd.show("hello.service", "StatusText")
                );
                for line in sd
                    .journal()
                    .lines()
                    .filter(|l| l.contains("reload failed") || l.contains("fdstore-exec reload:"))
                {
                    println!("                     {line}");
                }
            }
            (true, true) => {
                surprises.push(format!("reload {n}: the broken version was accepted"));
                progress(&format!("reload {n}: broken version accepted?!"));
            }
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    let fresh = fresh.stop();
    let kept = kept.stop();
    let journal = sd.journal();
    if journal.contains("not our child") {
        surprises.push("the journal says 'not our child'".into());
    }
    print_summary(
        &fresh,
        &kept,
        &reload_windows,
        done,
        failed_as_expected,
        &mut handover_ms,
        &sd.show("hello.service", "StatusText"),
    );
    let failed = fresh.failed() + kept.failed();
    if failed == 0 && surprises.is_empty() {
        println!("\nresult: PASS: no request failed across {done} hand-overs and 1 rollback");
    } else {
        println!("\nresult: FAIL");
        for s in &surprises {
            println!("  - {s}");
        }
        for e in fresh.examples.iter().chain(&kept.examples) {
            println!("  - {e}");
        }
        std::process::exit(1);
    }
}

fn set_config(path: &PathBuf, text: &str) {
    std::fs::write(path, format!("{text}\n")).expect("writing the configuration");
}

fn main_pid(sd: &Systemd) -> u32 {
    sd.show("hello.service", "MainPID").parse().unwrap_or(0)
}

fn print_summary(
    fresh: &LoadReport,
    kept: &LoadReport,
    windows: &[(Instant, Instant)],
    done: usize,
    rolled_back: usize,
    handover_ms: &mut [f64],
    status: &str,
) {
    println!("\n[4/4] summary\n");
    let ms = |us: Option<u32>| us.map_or("-".into(), |u| format!("{:.2} ms", u as f64 / 1000.0));
    let in_window = |t: Instant| {
        windows.iter().any(|(a, b)| {
            t + Duration::from_millis(100) >= *a && t <= *b + Duration::from_millis(100)
        })
    };
    println!(
        "      {:<16} {:>10} {:>8} {:>11} {:>11} {:>14}",
        "clients", "requests", "failed", "p50", "p99", "p99 (reloads)"
    );
    for (name, r) in [("new-connection", fresh), ("keep-alive", kept)] {
        println!(
            "      {:<16} {:>10} {:>8} {:>11} {:>11} {:>14}",
            name,
            r.ok + r.failed(),
            r.failed(),
            ms(r.quantile(0.5, |_| true)),
            ms(r.quantile(0.99, |_| true)),
            ms(r.quantile(0.99, in_window)),
        );
        for (kind, n) in &r.failures {
            println!("        {kind}: {n}");
        }
    }
    handover_ms.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        handover_ms
            .get(((handover_ms.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or("-".into(), |v| format!("{v:.0}"))
    };
    println!(
        "\n      reloads: {done} handed over, {rolled_back} rolled back (broken configuration)"
    );
    println!(
        "      systemctl reload round trip: min {} / median {} / max {} ms",
        pick(0.0),
        pick(0.5),
        pick(1.0)
    );
    let answers: std::collections::BTreeSet<&String> =
        fresh.bodies.iter().chain(&kept.bodies).collect();
    println!(
        "      servers that answered: {} (one per generation that served)",
        answers.len()
    );
    println!("      final status: {status}");
}
