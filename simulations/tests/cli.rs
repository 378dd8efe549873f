#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The `murmur-sim` command: `run --json`, study files, `sweep`.

use std::process::Command;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_murmur-sim"))
}

const SMALL: &[&str] = &[
    "--clients",
    "50",
    "--duration",
    "5",
    "--warmup",
    "1",
    "--targets",
    "10",
];

#[test]
fn run_json_prints_exactly_one_object() {
    let out = sim()
        .args(["run", "--json", "--link-delay", "0.001..0.002"])
        .args(SMALL)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut stream = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
    let v = stream.next().unwrap().unwrap();
    assert!(stream.next().is_none(), "more than one JSON value");
    assert_eq!(v["params"]["clients"], 50);
    assert_eq!(v["params"]["link_delay"], "0.001..0.002");
    assert!(v["latency"]["mean"].as_f64().unwrap() > 0.0);
    assert!(v["anonymity"]["mean"].as_f64().unwrap() > 0.0);
    assert_eq!(v["mixes"].as_array().unwrap().len(), 12);
}

#[test]
fn run_prints_a_summary_and_refuses_bad_values() {
    let out = sim().args(["run"]).args(SMALL).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("end-to-end latency"), "{text}");
    assert!(text.contains("anonymity"), "{text}");

    let out = sim().args(["run", "--warmup", "100"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warmup"));
}

#[test]
fn study_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study.toml");
    std::fs::write(
        &study,
        "layers = 2\nwidth = 3\nclients = 40\nduration = 4\nwarmup = 1\ntargets = 5\nseed = 9\n",
    )
    .unwrap();
    let out = sim()
        .args(["run", "--json", "--width", "2", "--study"])
        .arg(&study)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["params"]["layers"], 2);
    assert_eq!(v["params"]["width"], 2);
    assert_eq!(v["params"]["seed"], 9);

    std::fs::write(&study, "layers = 2\nmean_dealy = 0.1\n").unwrap();
    let out = sim().args(["run", "--study"]).arg(&study).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mean_dealy"));
}

#[test]
fn sweep_writes_csv_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = sim()
        .args([
            "sweep",
            "--sweep",
            "mean-delay=0.01,0.05",
            "--sweep",
            "cover-rate=1,2",
            "--threads",
            "2",
            "--out",
        ])
        .arg(dir.path())
        .args(SMALL)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.path().join("sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    for col in [
        "mean_delay",
        "cover_rate",
        "latency_mean",
        "latency_p95",
        "entropy_mean",
    ] {
        assert!(header.contains(&col), "{col} missing");
    }
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == header.len()));
    assert_eq!(rows[0][col("mean_delay")], "0.01");
    assert_eq!(rows[1][col("cover_rate")], "2");
    assert_eq!(rows[3][col("mean_delay")], "0.05");
    // More delay, more anonymity.
    let h = |r: &Vec<&str>| r[col("entropy_mean")].parse::<f64>().unwrap();
    assert!(h(&rows[2]) > h(&rows[0]));
    for svg in ["latency.svg", "entropy.svg"] {
        let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        assert!(text.starts_with("<svg"), "{svg}");
        assert!(
            text.contains("mean per-hop delay (s)"),
            "{svg} lacks the x label"
        );
        assert!(text.contains("λ=2"), "{svg} lacks the legend");
    }
}

#[test]
fn sweep_needs_axes() {
    let out = sim().args(["sweep"]).args(SMALL).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to sweep"));
}

#[test]
fn protocol_runs_client_cores_and_prints_a_summary_or_json() {
    let small = [
        "protocol",
        "--clients",
        "10",
        "--width",
        "3",
        "--rate",
        "0.2",
        "--fragments",
        "2",
        "--dead-mixes",
        "0.1",
        "--duration",
        "60",
    ];
    let out = sim().args(small).arg("--json").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut stream = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
    let v = stream.next().unwrap().unwrap();
    assert!(stream.next().is_none(), "more than one JSON value");
    assert_eq!(v["params"]["clients"], 10);
    assert_eq!(v["params"]["fragments"], 2);
    assert_eq!(v["mixes"].as_array().unwrap().len(), 9);
    assert_eq!(v["suspicion"]["dead"].as_array().unwrap().len(), 1);
    assert!(v["messages"]["created"].as_u64().unwrap() > 50);
    assert!(v["message_latency"]["mean"].as_f64().unwrap() > 0.0);

    let out = sim().args(small).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for part in [
        "message latency",
        "delivery latency",
        "retransmissions",
        "suspicion",
    ] {
        assert!(text.contains(part), "{text}");
    }

    let out = sim().args(["protocol", "--loss", "2"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loss"));
}
