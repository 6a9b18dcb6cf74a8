//! The commands `ironlb lab --keep` tells a newcomer to try, run exactly as it prints them: the real binary starts the
//! lab as a child process, the test reads its `try:` lines and runs each through `sh -c`, then stops the lab with
//! SIGINT and checks it tore its namespaces down. Every wait is bounded; the lab is killed on drop if anything fails.

mod netns_support;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// How long the lab may take to print its `try:` lines (setup, allocation, the failover demo, re-announcement).
const LAB_LIMIT: Duration = Duration::from_secs(120);
/// How long one command may take; `status --watch` runs until stopped and is stopped after this.
const COMMAND_LIMIT: Duration = Duration::from_secs(10);

/// Runs `line` with `sh -c` for at most [`COMMAND_LIMIT`]; returns whether it exited by itself, its exit status, and
/// its stdout and stderr together.
async fn run(line: &str) -> (bool, Option<i32>, String) {
    let child = Command::new("sh")
        .args(["-c", line])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let waited = tokio::time::timeout(COMMAND_LIMIT, child.wait_with_output()).await;
    match waited {
        Ok(output) => {
            let output = output.unwrap();
            let text = String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr);
            (true, output.status.code(), text)
        }
        Err(_) => {
            // kill_on_drop took the shell; its child (a long-running command) goes with the process group.
            let _ = std::process::Command::new("pkill")
                .args(["-P", &pid.to_string()])
                .status();
            (false, None, String::new())
        }
    }
}

/// Tears the lab down if the test fails before it does: Ctrl-C (SIGINT) lets the lab remove its namespaces, where
/// the SIGKILL of `kill_on_drop` would leave them behind; what is still there after 30 s is deleted by name.
struct TearDown {
    pid: u32,
}

impl Drop for TearDown {
    fn drop(&mut self) {
        let pid = self.pid.to_string();
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status();
        let proc = format!("/proc/{pid}");
        for _ in 0..300 {
            if !std::path::Path::new(&proc).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let listed = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output();
        let prefix = format!("ilb-lab-{pid}-");
        for line in listed
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
            .lines()
        {
            if let Some(ns) = line
                .split_whitespace()
                .next()
                .filter(|n| n.starts_with(&prefix))
            {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", ns])
                    .status();
            }
        }
    }
}

#[tokio::test]
async fn the_commands_the_lab_suggests_work_as_printed() {
    if netns_support::skip() {
        return;
    }
    let mut lab = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["lab", "--keep"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let tear_down = TearDown {
        pid: lab.id().unwrap(),
    };
    let mut lines = BufReader::new(lab.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let mut tries = Vec::new();
    let read = tokio::time::timeout(LAB_LIMIT, async {
        let mut in_try = false;
        while let Ok(Some(line)) = lines.next_line().await {
            printed.push(line.clone());
            if line == "try:" {
                in_try = true;
            } else if in_try {
                match line.strip_prefix("  ") {
                    Some(command) => tries.push(command.to_string()),
                    None => break,
                }
                // The lab flushes its last `try:` line and waits; the verify line is the last one it prints.
                if line.contains(" verify ") {
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the lab printed no complete `try:` list within {LAB_LIMIT:?}:\n{}",
        printed.join("\n")
    );
    assert!(
        tries.len() >= 4,
        "expected kubectl, arping, status and verify under try:\n{}",
        printed.join("\n")
    );
    // The healed node has taken its share back before the lab offers commands, so what they show holds still.
    let rejoined = printed.iter().find(|l| l.contains("rejoined; "));
    assert!(
        rejoined.is_some_and(|l| l.ends_with("(spread 0)") || l.ends_with("(spread 1)")),
        "no level spread after the healed node rejoined:\n{}",
        printed.join("\n")
    );
    let node_kubeconfig = printed
        .iter()
        .find_map(|l| l.strip_prefix("node-kubeconfig: "));
    assert!(
        node_kubeconfig.is_some(),
        "no node-kubeconfig: line:\n{}",
        printed.join("\n")
    );

    for command in &tries {
        let (exited, code, said) = run(command).await;
        println!("$ {command}\n  exited by itself: {exited}, status {code:?}\n{said}");
        if command.contains(" status --watch ") {
            // Runs until stopped: it must have been running, not have failed at once.
            assert!(!exited, "`{command}` ended by itself ({code:?}):\n{said}");
        } else if command.contains(" verify ") {
            // From inside the node's namespace it must reach the API with the node kubeconfig. On a kernel without
            // IPVS it then stops at reading IPVS, which is the one failure allowed.
            assert!(
                exited,
                "`{command}` did not finish within {COMMAND_LIMIT:?}"
            );
            assert!(
                !said.contains("onnection refused") && !said.contains("forbidden"),
                "`{command}` could not use the API from the node namespace:\n{said}"
            );
            if !ironlb::lab::demo::kernel_has_ipvs() {
                assert!(
                    said.contains("IPVS"),
                    "`{command}` failed for another reason than IPVS:\n{said}"
                );
            }
        } else {
            assert!(
                exited && code == Some(0),
                "`{command}` failed ({code:?}):\n{said}"
            );
            if command.starts_with("kubectl ") {
                assert!(
                    said.contains("demo-1"),
                    "`{command}` did not list the demo Services:\n{said}"
                );
            }
        }
    }
    // The status --watch was run as printed, so the first table it printed can be checked now.
    let watch = tries
        .iter()
        .find(|c| c.contains(" status --watch "))
        .unwrap();
    let snapshot = watch.replace(" --watch", "");
    let (exited, code, said) = run(&snapshot).await;
    assert!(
        exited && code == Some(0) && said.contains("demo-1"),
        "`{snapshot}`: {code:?}\n{said}"
    );

    // Ctrl-C tears the lab down.
    let pid = lab.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status();
    let ended = tokio::time::timeout(Duration::from_secs(30), lab.wait()).await;
    assert!(ended.is_ok(), "the lab did not end within 30 s of SIGINT");
    // The lab tore itself down: the guard must not clean up after it, or the check below would prove nothing.
    std::mem::forget(tear_down);
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&netns.stdout).to_string();
    assert!(
        !left.contains(&format!("ilb-lab-{pid}")),
        "the lab left namespaces behind:\n{left}"
    );
}
