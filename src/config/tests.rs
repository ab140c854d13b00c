//! Loading, layering and validation; durations in both spellings.
#![allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error

use std::time::Duration;

use super::*;

#[test]
fn layers_apply_in_order_and_errors_name_the_key() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "d.toml",
            "trust_domain = \"file.local\"\n[registry]\nheartbeat_interval_ms = 2000\n",
        )?;
        jail.set_env("DEVCYCLE_REGISTRY__HEARTBEAT_INTERVAL_MS", "3000");
        jail.set_env("DEVCYCLE_TEST_DATABASE_URL", "postgres://ignored");
        let f = Config::figment(Some(Path::new("d.toml")))
            .merge(Serialized::default("registry.missed_heartbeats", 7));
        let c = Config::from_figment(f).expect("valid");
        assert_eq!(c.trust_domain, "file.local");
        assert_eq!(c.registry.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(c.registry.missed_heartbeats, 7);

        jail.set_env("DEVCYCLE_REGISTRY__MISSED_HEARTBEATS", "0");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("registry.missed_heartbeats"), "{err}");

        jail.set_env("DEVCYCLE_REGISTRY__MISSED_HEARTBEATS", "3");
        jail.set_env("DEVCYCLE_REGISTRY__LISTEN", "not-an-address");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("registry.listen"), "{err}");
        Ok(())
    });
}

#[test]
fn unknown_keys_are_refused() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("d.toml", "[registry]\nlisten_port = 1\n")?;
        let err = Config::load(Some(Path::new("d.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
        Ok(())
    });
}

#[test]
fn external_issuers_need_protected_jwks_and_known_roles() {
    assert!(jwks_url_is_protected("https://idp.example/jwks.json"));
    assert!(jwks_url_is_protected("http://127.0.0.1:8080/jwks.json"));
    assert!(jwks_url_is_protected("http://[::1]/jwks"));
    assert!(jwks_url_is_protected("http://localhost/jwks"));
    assert!(!jwks_url_is_protected("http://idp.example/jwks.json"));
    assert!(!jwks_url_is_protected("http://10.0.0.1/jwks.json"));
    assert!(!jwks_url_is_protected("http://127.0.0.1@idp.example/jwks"));
    assert!(!jwks_url_is_protected("ftp://idp.example/jwks.json"));
    assert!(!jwks_url_is_protected("idp.example/jwks.json"));
    figment::Jail::expect_with(|jail| {
        let issuer = |url: &str, role: &str| {
            format!(
                "[[gateway.external_issuers]]\nissuer = \"https://idp.example\"\naudience = \"devcycle\"\nsubject_prefix = \"idp-\"\njwks_url = \"{url}\"\nrole_map = {{ eng = [\"{role}\"] }}\n"
            )
        };
        jail.create_file("ok.toml", &issuer("https://idp.example/jwks", "developer"))?;
        let c = Config::load(Some(Path::new("ok.toml"))).expect("valid");
        assert_eq!(c.gateway.external_issuers[0].roles_claim, "groups");
        jail.create_file("http.toml", &issuer("http://idp.example/jwks", "developer"))?;
        let err = Config::load(Some(Path::new("http.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gateway.external_issuers") && err.contains("https"),
            "{err}"
        );
        jail.create_file("role.toml", &issuer("https://idp.example/jwks", "worker"))?;
        let err = Config::load(Some(Path::new("role.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("role_map") && err.contains("worker"), "{err}");
        Ok(())
    });
}

fn load_err(file: &str) -> String {
    Config::load(Some(Path::new(file))).unwrap_err().to_string()
}

#[test]
fn durations_take_humantime_strings() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "d.toml",
            "[registry]\nheartbeat_interval = \"2s\"\n[gateway]\naccess_ttl = \"15m\"\nsession_idle = \"1day\"\n[executor.limits]\nwall_time = \"1h 30m\"\n[[gateway.external_issuers]]\nissuer = \"https://idp.example\"\naudience = \"devcycle\"\nsubject_prefix = \"idp-\"\njwks_url = \"https://idp.example/jwks\"\njwks_refresh = \"1m\"\n",
        )?;
        jail.set_env("DEVCYCLE_SHUTDOWN__DRAIN", "1m 30s");
        let c = Config::load(Some(Path::new("d.toml"))).expect("valid");
        assert_eq!(c.registry.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.gateway.access_ttl, Duration::from_secs(900));
        assert_eq!(c.gateway.session_idle, Duration::from_secs(24 * 3600));
        assert_eq!(c.executor.limits.wall_time, Duration::from_secs(90 * 60));
        let issuer = &c.gateway.external_issuers[0];
        assert_eq!(issuer.jwks_refresh, Duration::from_secs(60));
        assert_eq!(c.shutdown.drain, Duration::from_secs(90));
        // Defaults survive the round trip through their humantime form.
        assert_eq!(c.scheduler.heartbeat_interval, Duration::from_secs(5));
        let month = Duration::from_secs(30 * 24 * 3600);
        assert_eq!(c.gateway.session_absolute, month);
        Ok(())
    });
}

#[test]
fn legacy_integer_keys_still_work_in_files_and_environment() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "d.toml",
            "[registry]\nheartbeat_interval_ms = 2000\n[gateway]\naccess_ttl_s = 900\n[executor.limits]\ncpu_time_ms = 5000\n[[gateway.external_issuers]]\nissuer = \"https://idp.example\"\naudience = \"devcycle\"\nsubject_prefix = \"idp-\"\njwks_url = \"https://idp.example/jwks\"\njwks_refresh_s = 60\n",
        )?;
        jail.set_env("DEVCYCLE_SCHEDULER__HEARTBEAT_INTERVAL_MS", "700");
        jail.set_env("DEVCYCLE_TLS__RELOAD_INTERVAL_MS", "250");
        let c = Config::load(Some(Path::new("d.toml"))).expect("valid");
        assert_eq!(c.registry.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.gateway.access_ttl, Duration::from_secs(900));
        assert_eq!(c.executor.limits.cpu_time, Duration::from_secs(5));
        let issuer = &c.gateway.external_issuers[0];
        assert_eq!(issuer.jwks_refresh, Duration::from_secs(60));
        assert_eq!(c.scheduler.heartbeat_interval, Duration::from_millis(700));
        assert_eq!(c.tls.reload_interval, Duration::from_millis(250));
        Ok(())
    });
}

#[test]
fn both_spellings_in_one_source_are_refused_and_later_layers_win() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("both.toml", "[shutdown]\ndrain = \"5s\"\ndrain_ms = 5000\n")?;
        let err = load_err("both.toml");
        assert!(
            err.contains("shutdown.drain and shutdown.drain_ms"),
            "{err}"
        );

        // Across layers the usual order holds, whichever spelling each uses.
        jail.create_file("new.toml", "[shutdown]\ndrain = \"5s\"\n")?;
        jail.set_env("DEVCYCLE_SHUTDOWN__DRAIN_MS", "7000");
        let c = Config::load(Some(Path::new("new.toml"))).expect("valid");
        assert_eq!(c.shutdown.drain, Duration::from_secs(7));
        jail.create_file("old.toml", "[shutdown]\ndrain_ms = 5000\n")?;
        jail.set_env("DEVCYCLE_SHUTDOWN__DRAIN", "3s");
        let err = Config::load(Some(Path::new("old.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shutdown.drain and shutdown.drain_ms"),
            "{err}"
        );
        jail.clear_env();
        jail.set_env("DEVCYCLE_SHUTDOWN__DRAIN", "3s");
        let c = Config::load(Some(Path::new("old.toml"))).expect("valid");
        assert_eq!(c.shutdown.drain, Duration::from_secs(3));
        Ok(())
    });
}

#[test]
fn bad_durations_name_the_key() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("word.toml", "[shutdown]\ndrain = \"soon\"\n")?;
        let err = load_err("word.toml");
        assert!(
            err.contains("shutdown.drain") && err.contains("soon"),
            "{err}"
        );

        jail.create_file("int.toml", "[tls]\nreload_interval = 5000\n")?;
        let err = load_err("int.toml");
        assert!(err.contains("tls.reload_interval"), "{err}");

        jail.create_file("frac.toml", "[gateway]\naccess_ttl = \"1500ms\"\n")?;
        let err = load_err("frac.toml");
        assert!(
            err.contains("gateway.access_ttl") && err.contains("whole number of seconds"),
            "{err}"
        );

        jail.create_file("us.toml", "[shutdown]\ndrain = \"1500us\"\n")?;
        let err = load_err("us.toml");
        assert!(
            err.contains("shutdown.drain") && err.contains("whole number of milliseconds"),
            "{err}"
        );

        jail.create_file("old.toml", "[registry]\nheartbeat_interval_ms = \"5s\"\n")?;
        let err = load_err("old.toml");
        assert!(err.contains("registry.heartbeat_interval_ms"), "{err}");

        jail.create_file("range.toml", "[registry]\nheartbeat_interval = \"50ms\"\n")?;
        let err = load_err("range.toml");
        assert!(err.contains("registry.heartbeat_interval:"), "{err}");
        Ok(())
    });
}

#[test]
fn own_certificate_files_and_health_port() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("DEVCYCLE_TLS__CERT_FILE", "/run/tls/tls.crt");
        jail.set_env("DEVCYCLE_TLS__KEY_FILE", "/run/tls/tls.key");
        jail.set_env("DEVCYCLE_TLS__CA_FILE", "/run/tls/ca.crt");
        jail.set_env("DEVCYCLE_HEALTH__LISTEN", "0.0.0.0:7410");
        let c = Config::load(None).expect("valid");
        let files = c.identity_files(&c.service_id("registry"));
        assert_eq!(files.cert, Path::new("/run/tls/tls.crt"));
        assert_eq!(files.key, Path::new("/run/tls/tls.key"));
        assert_eq!(files.ca, Path::new("/run/tls/ca.crt"));
        assert_eq!(c.health.listen, "0.0.0.0:7410");

        jail.set_env("DEVCYCLE_TLS__KEY_FILE", "");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("tls.cert_file"), "{err}");
        jail.set_env("DEVCYCLE_TLS__KEY_FILE", "/run/tls/tls.key");
        jail.set_env("DEVCYCLE_HEALTH__LISTEN", "localhost:7410");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("health.listen"), "{err}");
        Ok(())
    });
}
