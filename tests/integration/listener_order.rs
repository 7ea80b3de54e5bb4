//! The program sees its listeners in one documented order in every
//! generation, after a reload and after `systemctl restart`: first the
//! `--listen` names in command-line order, then the listener file's in file
//! order, then every other name systemd passed (socket units, the fd store)
//! sorted by name. A program that takes descriptors by number (uvicorn
//! `--fd 3`, many older daemons) keeps getting the same socket at the same
//! number.

use crate::support::app::{main_pid, unit, wait_gone, App};
use crate::support::{free_port, wait_for, Systemd};

/// The `LISTEN_FDNAMES` of each generation so far, from the probe's report:
/// the names of its `fd NAME NUMBER ...` lines in descriptor order.
fn orders(app: &App) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(&app.report).unwrap_or_default();
    let mut generations: Vec<Vec<(u32, String)>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("start pid ") {
            generations.push(Vec::new());
        } else if let Some(rest) = line.strip_prefix("fd ") {
            let words: Vec<&str> = rest.split(' ').collect();
            let current = generations.last_mut().expect("fd lines follow a start");
            current.push((words[1].parse().unwrap(), words[0].to_owned()));
        }
    }
    generations
        .into_iter()
        .map(|mut g| {
            g.sort();
            g.into_iter().map(|(_, name)| name).collect()
        })
        .collect()
}

fn wait_generations(app: &App, n: usize) -> Vec<Vec<String>> {
    wait_for(
        &format!("{n} generations to report their listeners"),
        std::time::Duration::from_secs(20),
        || {
            let o = orders(app);
            (o.len() >= n && o[n - 1].len() == 5).then_some(o)
        },
    )
}

fn listeners_keep_one_order_across_reloads_and_restarts(sd: &Systemd) {
    let [beta, alpha, file_one, zeta, gamma] = [(); 5].map(|_| free_port());
    let app = App::new(sd);
    app.version("receive ready");
    let listen_file = sd.path("listeners");
    std::fs::write(&listen_file, format!("mid=tcp:127.0.0.1:{file_one}\n")).unwrap();
    sd.install(&[
        (
            "app-zeta.socket",
            &format!(
                "[Socket]\nListenStream=127.0.0.1:{zeta}\nFileDescriptorName=zeta\nService=app.service\n"
            ),
        ),
        (
            "app-gamma.socket",
            &format!(
                "[Socket]\nListenStream=127.0.0.1:{gamma}\nFileDescriptorName=gamma\nService=app.service\n"
            ),
        ),
        (
            "app.service",
            &unit(
                &app,
                &format!(
                    // The program only reports its listeners and accepts
                    // on none: the accept proof of every mode would
                    // refuse it.
                    "--listen beta=tcp:127.0.0.1:{beta} --listen alpha=tcp:127.0.0.1:{alpha} --listen-file {} --ready notify+unproven",
                    listen_file.display()
                ),
                // zeta first: systemd passes socket units in this order.
                "Sockets=app-zeta.socket app-gamma.socket\n",
            ),
        ),
    ]);
    sd.ok(&["start", "app-zeta.socket", "app-gamma.socket"]);
    sd.ok(&["start", "app.service"]);
    let expected = ["beta", "alpha", "mid", "gamma", "zeta"];
    assert_eq!(wait_generations(&app, 1)[0], expected, "first start");

    // A hand-over: the listeners come from the old generation.
    let old = main_pid(sd);
    sd.ok(&["reload", "app.service"]);
    wait_gone(&old.to_string());
    assert_eq!(wait_generations(&app, 2)[1], expected, "after a reload");

    // A restart: the created listeners come back from the fd store (which
    // systemd hands back in its own order), the others from the sockets.
    sd.ok(&["restart", "app.service"]);
    assert_eq!(wait_generations(&app, 3)[2], expected, "after a restart");
    sd.ok(&["restart", "app.service"]);
    assert_eq!(
        wait_generations(&app, 4)[3],
        expected,
        "after a second restart"
    );
    sd.ok(&["stop", "app.service"]);
}

on_each_systemd!(listeners_keep_one_order_across_reloads_and_restarts);
