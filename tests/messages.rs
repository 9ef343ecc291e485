//! What a user reads when something is wrong: the file or setting named,
//! and each cause said once.

mod common;

use common::*;

#[test]
fn an_error_says_each_cause_once_and_names_the_file() {
    let d = Deployment::new();
    let missing = d.path("no-such-dir/linkage.key");
    let output = joinery()
        .args([
            "bench",
            "linkage",
            "--data",
            d.path("data").to_str().unwrap(),
        ])
        .args(["--truth", d.path("truth.csv").to_str().unwrap()])
        .args(["--linkage-key", missing.to_str().unwrap()])
        .output()
        .expect("run joinery");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}
