//! Reloads of a running proxy: new routes, certificates and trust without a restart, all or
//! nothing.

mod common;

use common::*;
use http::StatusCode;
use trustgate::reload::Outcome;

const H1: &[&[u8]] = &[b"http/1.1"];

#[tokio::test]
async fn a_reload_swaps_the_routes_and_a_bad_one_changes_nothing() {
    let pki = TestPki::new();
    let a = Backend::recording(&pki.leaf(&["backend-a"]), H1, "a").await;
    let b = Backend::recording(&pki.leaf(&["backend-b"]), H1, "b").await;
    let proxy = Proxy::start(&pki, &route_to("/a", "backend-a", &a)).await;
    let client = client(&pki, false);
    assert_eq!(get(&client, &proxy.url("/a/x")).await.text(), "backend:a\n");

    // Nothing changed: nothing to do.
    assert_eq!(proxy.reloader.reload().unwrap(), Outcome::Unchanged);

    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let routes_b = text.replace(
        &route_to("/a", "backend-a", &a),
        &route_to("/b", "backend-b", &b),
    );
    write(&proxy.config_path, &routes_b);
    match proxy.reloader.reload().unwrap() {
        Outcome::Applied {
            generation,
            changes,
        } => {
            assert_eq!(generation, 2);
            assert!(changes.contains("+/b -> https://backend-b:"), "{changes}");
            assert!(changes.contains("-/a"), "{changes}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&client, &proxy.url("/b/x")).await.text(), "backend:b\n");
    assert_eq!(
        get(&client, &proxy.url("/a/x")).await.status,
        StatusCode::NOT_FOUND
    );

    // A broken file keeps generation 2 serving, with check's wording in the error.
    write(&proxy.config_path, &format!("{routes_b}\n[oops\n"));
    let err = proxy.reloader.reload().unwrap_err();
    assert!(
        err.to_string()
            .contains(&proxy.config_path.display().to_string()),
        "{err}"
    );
    assert_eq!(get(&client, &proxy.url("/b/x")).await.text(), "backend:b\n");
    logs()
        .line_with(&["reload refused", "previous configuration keeps serving"])
        .await;

    // A changed listen address takes a restart: refused, nothing applied.
    write(
        &proxy.config_path,
        &routes_b.replace("127.0.0.1:0", "127.0.0.1:1"),
    );
    let err = proxy.reloader.reload().unwrap_err();
    assert!(
        err.to_string().contains("server.listen: changed from"),
        "{err}"
    );
    assert!(err.to_string().contains("takes a restart"), "{err}");
    assert_eq!(get(&client, &proxy.url("/b/x")).await.text(), "backend:b\n");
}
