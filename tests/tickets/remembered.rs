//! Remembered peers: a node that fetched once needs no address the next time.

use super::*;

#[test]
fn a_second_fetch_needs_no_address_and_no_remember_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, _, bytes) = Seeder::with_file(dir.path(), (1 << 20) + 5, 99, &[]);
    let fdd = dir.path().join("f");
    let first = fetch(&seeder.root, &seeder.peer, &dir.path().join("one.bin"), &fdd);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // The data directory now remembers the seeder, with its node id.
    let list: serde_json::Value = serde_json::from_slice(&std::fs::read(fdd.join("peers.json")).unwrap()).unwrap();
    assert_eq!(list[0]["node_id"], serde_json::json!(seeder.id), "{list}");
    assert_eq!(list[0]["addr"], serde_json::json!(seeder.addr), "{list}");
    assert_eq!(list[0]["shared"], serde_json::json!(true), "{list}");
    // No --peer, no ticket: the remembered seeder serves it.
    let two = dir.path().join("two.bin");
    let o = run(crate::pex().args(["fetch", &seeder.root, "-q", "-o", two.to_str().unwrap(), "--data-dir"]).arg(&fdd));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&two).unwrap() == bytes);
    // --no-remember neither records nor uses the list.
    let gdd = dir.path().join("g");
    let mut args = fetch_args(&seeder.root, &seeder.peer, &dir.path().join("three.bin"), &gdd);
    args.push("--no-remember".into());
    assert!(run(crate::pex().args(&args)).status.success());
    assert!(!gdd.join("peers.json").exists(), "--no-remember wrote the list");
    for extra in [&[][..], &["--no-remember"][..]] {
        let o = run(crate::pex()
            .args(["fetch", &seeder.root, "-o", dir.path().join("four.bin").to_str().unwrap(), "--data-dir"])
            .arg(if extra.is_empty() { &gdd } else { &fdd })
            .args(extra));
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8(o.stderr).unwrap();
        // It says which means it tried and what each found (the tests run with PEX_NO_LAN).
        let remembered = if extra.is_empty() { "none" } else { "off" };
        let want = format!("error: no peer found: LAN: off; DHT: off (use --dht); remembered peers: {remembered}");
        assert_eq!(err.trim_end(), want, "{extra:?}");
    }
}
