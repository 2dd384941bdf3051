//! Unit tests of loading, validation and redaction.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_str(toml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, toml).unwrap();
    Settings::load(Some(&path), env(vars))
}

fn invalid_key(toml: &str, vars: &[(&str, &str)]) -> String {
    match load_str(toml, vars).and_then(|settings| settings.validate()) {
        Ok(_) => panic!("accepted: {toml} {vars:?}"),
        Err(err) => err.key,
    }
}

#[test]
fn default_toml_is_exactly_the_builtin_defaults() {
    let parsed: Settings = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
    assert_eq!(parsed, Settings::default());
    // And the loader sees the same thing.
    assert_eq!(
        load_str(DEFAULT_CONFIG_TOML, &[]).unwrap(),
        Settings::default()
    );
    Settings::default().validate().unwrap();
}

#[test]
fn max_pause_defaults_to_ten_minutes_and_is_configurable() {
    let config = Settings::default().validate().unwrap();
    assert_eq!(config.jogg.max_pause, Duration::from_secs(600));
    let settings = load_str("[jogg]\nmax_pause = \"90s\"\n", &[]).unwrap();
    assert_eq!(
        settings.validate().unwrap().jogg.max_pause,
        Duration::from_secs(90)
    );
}

#[test]
fn file_overrides_defaults_and_environment_overrides_file() {
    let toml =
        "[jogg]\nburst = 3\nrequests_per_second = 2.5\n[polling]\nmin_interval = \"250ms\"\n";
    let from_file = load_str(toml, &[]).unwrap();
    assert_eq!(from_file.jogg.burst, 3);
    assert_eq!(from_file.jogg.requests_per_second, 2.5);
    assert_eq!(
        from_file.jogg.max_in_flight, 16,
        "untouched keys keep defaults"
    );

    let with_env = load_str(
        toml,
        &[
            ("JOGG_RELAY__JOGG__BURST", "7"),
            ("JOGG_RELAY__POLLING__MIN_INTERVAL", "500ms"),
            (
                "JOGG_RELAY__CALLBACKS__URLS",
                "http://a.example/x,http://b.example/y",
            ),
            ("JOGG_RELAY__CALLBACKS__RETRY_SCHEDULE", "1s,2s"),
            ("JOGG_RELAY_CONFIG", "/ignored.toml"),
        ],
    )
    .unwrap();
    assert_eq!(with_env.jogg.burst, 7);
    assert_eq!(with_env.jogg.requests_per_second, 2.5);
    let config = with_env.validate().unwrap();
    assert_eq!(config.polling.min_interval, Duration::from_millis(500));
    assert_eq!(config.callbacks.urls.len(), 2);
    assert_eq!(
        config.callbacks.retry_schedule,
        [Duration::from_secs(1), Duration::from_secs(2)]
    );
}

/// String keys from the environment are the variable's bytes, however
/// much they look like numbers or booleans; the numeric, boolean and
/// list keys still parse theirs.
#[test]
fn environment_strings_stay_strings_and_numbers_still_parse() {
    let forty_digits = "1234567890123456789012345678901234567890";
    for value in [
        "000123",
        "1e3",
        "true",
        "0x10",
        forty_digits,
        "1.50",
        "-0",
        "nan",
    ] {
        let settings = load_str(
            "",
            &[
                ("JOGG_RELAY__SERVER__TOKEN", value),
                ("JOGG_RELAY__JOGG__API_KEY", value),
            ],
        )
        .unwrap();
        assert_eq!(settings.server.token.0.as_deref(), Some(value));
        assert_eq!(settings.jogg.api_key.0.as_deref(), Some(value));
        let config = settings.validate().unwrap();
        assert_eq!(config.server.token.unwrap().expose_secret(), value);
        assert_eq!(config.jogg.api_key.unwrap().expose_secret(), value);
    }

    let settings = load_str(
        "",
        &[
            ("JOGG_RELAY__JOGG__REQUESTS_PER_SECOND", "1e3"),
            ("JOGG_RELAY__JOGG__BURST", "016"),
            ("JOGG_RELAY__JOGG__MAX_IN_FLIGHT", "4"),
            ("JOGG_RELAY__SERVER__MAX_CONNECTIONS", "64"),
            ("JOGG_RELAY__POLLING__MULTIPLIER", "2"),
            ("JOGG_RELAY__POLLING__JITTER", "0.25"),
            ("JOGG_RELAY__CALLBACKS__ALLOW_PRIVATE_TARGETS", "TRUE"),
            (
                "JOGG_RELAY__CALLBACKS__URLS",
                "http://a.example/x, http://b.example/y",
            ),
            ("JOGG_RELAY__CALLBACKS__RETRY_SCHEDULE", "1s"),
        ],
    )
    .unwrap();
    assert_eq!(settings.jogg.requests_per_second, 1000.0);
    assert_eq!(settings.jogg.burst, 16);
    assert_eq!(settings.jogg.max_in_flight, 4);
    assert_eq!(settings.server.max_connections, 64);
    assert_eq!(settings.polling.multiplier, 2.0);
    assert_eq!(settings.polling.jitter, 0.25);
    assert!(settings.callbacks.allow_private_targets);
    assert_eq!(
        settings.callbacks.urls,
        ["http://a.example/x", "http://b.example/y"]
    );
    assert_eq!(settings.callbacks.retry_schedule, ["1s"]);
    let none = load_str("", &[("JOGG_RELAY__CALLBACKS__URLS", "")]).unwrap();
    assert!(none.callbacks.urls.is_empty(), "empty text is no URLs");
    for (name, value, key) in [
        ("JOGG_RELAY__JOGG__BURST", "7.5", "jogg.burst"),
        (
            "JOGG_RELAY__JOGG__MAX_IN_FLIGHT",
            "-1",
            "jogg.max_in_flight",
        ),
        ("JOGG_RELAY__POLLING__JITTER", "a bit", "polling.jitter"),
        (
            "JOGG_RELAY__CALLBACKS__ALLOW_PRIVATE_TARGETS",
            "maybe",
            "callbacks.allow_private_targets",
        ),
    ] {
        assert_eq!(invalid_key("", &[(name, value)]), key, "{name}={value}");
    }
}

#[test]
fn every_invalid_value_names_its_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[jogg]\nrequests_per_second = 1e-20\n",
            &[],
            "jogg.requests_per_second",
        ),
        (
            "[jogg]\nrequests_per_second = 1e300\n",
            &[],
            "jogg.requests_per_second",
        ),
        (
            "",
            &[("JOGG_RELAY__JOGG__REQUESTS_PER_SECOND", "nan")],
            "jogg.requests_per_second",
        ),
        ("[jogg]\nburst = 4294967295\n", &[], "jogg.burst"),
        (
            "[polling]\nfirst_after = \"10000years\"\n",
            &[],
            "polling.first_after",
        ),
        (
            "[callbacks]\nretry_schedule = [\"5s\", \"3651d\"]\n",
            &[],
            "callbacks.retry_schedule",
        ),
        (
            "[server]\nmax_connections = 0\n",
            &[],
            "server.max_connections",
        ),
        (
            "[server]\nheader_timeout = \"0s\"\n",
            &[],
            "server.header_timeout",
        ),
        (
            "[server]\nbody_timeout = \"soon\"\n",
            &[],
            "server.body_timeout",
        ),
        (
            "[server]\nwrite_timeout = \"0s\"\n",
            &[],
            "server.write_timeout",
        ),
        (
            "[jogg]\nrequests_per_second = 0\n",
            &[],
            "jogg.requests_per_second",
        ),
        (
            "[jogg]\nrequests_per_second = -1.5\n",
            &[],
            "jogg.requests_per_second",
        ),
        (
            "",
            &[("JOGG_RELAY__JOGG__REQUESTS_PER_SECOND", "fast")],
            "jogg.requests_per_second",
        ),
        ("[jogg]\nburst = 0\n", &[], "jogg.burst"),
        ("[jogg]\nmax_in_flight = 0\n", &[], "jogg.max_in_flight"),
        ("[jogg]\nbase_url = \"not a url\"\n", &[], "jogg.base_url"),
        (
            "[jogg]\nbase_url = \"ftp://x.example\"\n",
            &[],
            "jogg.base_url",
        ),
        ("[jogg]\ntimeout = \"soon\"\n", &[], "jogg.timeout"),
        ("[jogg]\nmax_pause = \"500ms\"\n", &[], "jogg.max_pause"),
        ("[jogg]\nmax_pause = \"a year\"\n", &[], "jogg.max_pause"),
        (
            "[polling]\nmin_interval = \"2m\"\nmax_interval = \"1m\"\n",
            &[],
            "polling.min_interval",
        ),
        ("[polling]\nmultiplier = 0.5\n", &[], "polling.multiplier"),
        ("[polling]\njitter = 1.5\n", &[], "polling.jitter"),
        (
            "[polling]\ngive_up_after = \"forever\"\n",
            &[],
            "polling.give_up_after",
        ),
        (
            "[callbacks]\nurls = [\"http://ok.example\", \"::nope\"]\n",
            &[],
            "callbacks.urls",
        ),
        (
            "[callbacks]\nsecret = \"not-whsec\"\n",
            &[],
            "callbacks.secret",
        ),
        (
            "[callbacks]\nsecret = \"whsec_!!!\"\n",
            &[],
            "callbacks.secret",
        ),
        (
            "[callbacks]\nretry_schedule = [\"5s\", \"later\"]\n",
            &[],
            "callbacks.retry_schedule",
        ),
        ("[server]\nbind = \"localhost\"\n", &[], "server.bind"),
        ("[server]\nbind = \"0.0.0.0:8080\"\n", &[], "server.token"),
        ("[database]\nurl = \"mysql://x\"\n", &[], "database.url"),
        (
            "[database]\nurl = \"postgres://h/db?sslmode=sometimes\"\n",
            &[],
            "database.url",
        ),
        (
            "[database]\nurl = \"sqlite://a.db\"\nurl_file = \"/nonexistent/url\"\n",
            &[],
            "database.url",
        ),
        (
            "[database]\nurl_file = \"/nonexistent/url\"\n",
            &[],
            "database.url_file",
        ),
        ("[database]\nurl_file = 5\n", &[], "database.url_file"),
        ("[log]\nformat = \"xml\"\n", &[], "log.format"),
        (
            "[jogg]\napi_key_file = \"/nonexistent/key\"\n",
            &[],
            "jogg.api_key_file",
        ),
        (
            "[jogg]\napi_key = \"k\"\napi_key_file = \"/x\"\n",
            &[],
            "jogg.api_key",
        ),
        ("[jogg]\nburst = \"many\"\n", &[], "jogg.burst"),
        ("[polling]\nstrategy = \"fast\"\n", &[], "polling.strategy"),
        ("[polling]\nstrategy = 1\n", &[], "polling.strategy"),
        (
            "[polling]\nadaptive_step = 0\n",
            &[],
            "polling.adaptive_step",
        ),
        (
            "[polling]\nadaptive_step = 0.6\n",
            &[],
            "polling.adaptive_step",
        ),
        (
            "[polling]\nadaptive_step = nan\n",
            &[],
            "polling.adaptive_step",
        ),
        (
            "[polling]\nadaptive_step = -0.05\n",
            &[],
            "polling.adaptive_step",
        ),
        (
            "[polling]\nadaptive_half_life = 0\n",
            &[],
            "polling.adaptive_half_life",
        ),
        (
            "[polling]\nadaptive_half_life = 1001\n",
            &[],
            "polling.adaptive_half_life",
        ),
        (
            "[polling]\nadaptive_warmup = 0\n",
            &[],
            "polling.adaptive_warmup",
        ),
        (
            "[polling]\nadaptive_warmup = -3\n",
            &[],
            "polling.adaptive_warmup",
        ),
        (
            "",
            &[("JOGG_RELAY__POLLING__STRATEGY", "Adaptively")],
            "polling.strategy",
        ),
        (
            "",
            &[("JOGG_RELAY__POLLING__ADAPTIVE_STEP", "NaN")],
            "polling.adaptive_step",
        ),
        (
            "",
            &[("JOGG_RELAY__POLLING__ADAPTIVE_STEP", "a little")],
            "polling.adaptive_step",
        ),
        (
            "",
            &[("JOGG_RELAY__POLLING__ADAPTIVE_HALF_LIFE", "0")],
            "polling.adaptive_half_life",
        ),
        (
            "",
            &[("JOGG_RELAY__POLLING__ADAPTIVE_HALF_LIFE", "1.5")],
            "polling.adaptive_half_life",
        ),
        (
            "",
            &[("JOGG_RELAY__POLLING__ADAPTIVE_WARMUP", "0")],
            "polling.adaptive_warmup",
        ),
        // More than the 256 finished videos a half-life of 10 keeps: the
        // schedule could never warm up.
        (
            "[polling]\nadaptive_half_life = 10\nadaptive_warmup = 257\n",
            &[],
            "polling.adaptive_warmup",
        ),
    ];
    for (toml, vars, key) in cases {
        assert_eq!(&invalid_key(toml, vars), key, "{toml} {vars:?}");
    }
}

/// A file that does not parse is reported by file, line and column,
/// never with the text around the error: there, an unterminated or
/// malformed secret would be printed back.
#[test]
fn toml_syntax_errors_never_quote_the_source() {
    let marker = "S3CRET-marker-0123456789";
    let files = [
        format!("[jogg]\napi_key = \"{marker}\nburst = 3\n"),
        format!("[jogg]\napi_key = '{marker}\n"),
        format!("[server]\ntoken = \"\"\"{marker}\n"),
        format!("[server]\ntoken = \"{marker}\\q\"\n"),
        format!("[server]\ntoken = {marker}\n"),
        format!("[server]\ntoken = \"{marker}\" trailing\n"),
        format!("[server]\ntoken = \"{marker}\"\ntoken = \"{marker}\"\n"),
        format!("[callbacks]\nsecret = \"whsec_{marker}\\u{{ZZ}}\"\n"),
        format!("{marker} = \n"),
        format!("[{marker}\n"),
    ];
    for (index, text) in files.iter().enumerate() {
        let err = load_str(text, &[]).expect_err(text);
        let shown = err.to_string();
        assert_eq!(err.key, "--config", "{shown}");
        assert!(shown.contains("relay.toml"), "names the file: {shown}");
        assert!(shown.contains(" at line "), "names the line: {shown}");
        for fragment in ["S3CRET", "marker", "0123456789"] {
            assert!(!shown.contains(fragment), "file {index} leaked: {shown}");
        }
    }
    let err = load_str(&files[0], &[]).unwrap_err();
    assert!(err.message.contains("at line 2, column "), "{err}");
}

/// A secret or path written without quotes is refused by its key, and the
/// value is not shown: the config crate would have turned `api_key = 123`
/// into the text "123", and quoted a number too large for an integer.
#[test]
fn unquoted_values_of_string_keys_are_refused_by_key_without_the_value() {
    for (text, key) in [
        ("[jogg]\napi_key = 12345678901234567890123\n", "--config"),
        ("[jogg]\napi_key = 1234567890123456\n", "jogg.api_key"),
        ("[jogg]\napi_key = 0x1234567890abcdef\n", "jogg.api_key"),
        ("[server]\ntoken = 1234567890123456.5\n", "server.token"),
        (
            "[callbacks]\nvideo_secret = true\n",
            "callbacks.video_secret",
        ),
        ("[jogg]\napi_key_file = 7\n", "jogg.api_key_file"),
        ("[jogg]\nbase_url = 8080\n", "jogg.base_url"),
        ("[polling]\nfirst_after = 10\n", "polling.first_after"),
    ] {
        let err = load_str(text, &[]).expect_err(text);
        assert_eq!(err.key, key, "{err}");
        for fragment in ["12345678901234567890123", "1234567890123456", "0x1234"] {
            assert!(!err.to_string().contains(fragment), "{err}");
        }
    }
    // A callback URL may carry a token: a bad one is named by position.
    let err = load_str(
        "[callbacks]\nurls = [\"https://ok.example/a\", \"hooks.example/T0KEN-in-path\"]\n",
        &[],
    )
    .unwrap()
    .validate()
    .unwrap_err();
    assert_eq!(err.key, "callbacks.urls");
    assert!(err.message.contains("entry 2"), "{err}");
    assert!(!err.to_string().contains("T0KEN"), "{err}");
    // Keys that are not strings still take their own types.
    let settings = load_str("[jogg]\nburst = 3\nrequests_per_second = 2\n", &[]).unwrap();
    assert_eq!(settings.jogg.burst, 3);
}

/// Plain http to JoggAI is warned about unless it stays on this
/// machine (the tests' simulators); the warning shows no credentials.
#[test]
fn plain_http_upstream_beyond_loopback_is_warned_about() {
    let warnings = |base_url: &str| {
        let toml = format!("[jogg]\nbase_url = \"{base_url}\"\napi_key = \"sk-key-0123\"\n");
        load_str(&toml, &[])
            .unwrap()
            .validate()
            .unwrap()
            .startup_warnings()
    };
    for quiet in [
        "https://api.jogg.ai",
        "https://203.0.113.9",
        "http://127.0.0.1:9000",
        "http://127.8.0.1",
        "http://[::1]:9000",
        "http://[::ffff:127.0.0.1]",
        "http://localhost:9000",
        "http://LOCALHOST",
        "http://sim.localhost",
    ] {
        assert_eq!(warnings(quiet), Vec::<String>::new(), "{quiet}");
    }
    for loud in [
        "http://api.jogg.ai",
        "http://10.0.0.5:8080",
        "http://[2001:db8::1]",
        "http://localhost.example.com",
        "http://user:pa55word@proxy.example.com/",
    ] {
        let shown = warnings(loud);
        assert_eq!(shown.len(), 1, "{loud}: {shown:?}");
        assert!(shown[0].contains("jogg.base_url"), "{shown:?}");
        assert!(
            !shown[0].contains("pa55word") && !shown[0].contains("sk-key"),
            "{shown:?}"
        );
    }
}

#[test]
fn unknown_keys_are_refused_by_name() {
    assert_eq!(
        invalid_key("[jogg]\napi_kee = \"x\"\n", &[]),
        "jogg.api_kee"
    );
    assert_eq!(invalid_key("[jgog]\n", &[]), "jgog");
    assert_eq!(
        invalid_key("", &[("JOGG_RELAY__POLLING__MIN", "1s")]),
        "polling.min"
    );
}

#[test]
fn non_loopback_bind_is_accepted_with_a_token() {
    let settings = load_str(
        "[server]\nbind = \"0.0.0.0:8080\"\ntoken = \"t0k-0123456789ab\"\n",
        &[],
    )
    .unwrap();
    assert!(settings.validate().unwrap().server.token.is_some());
}

/// Weak secrets are refused by key: a token under 16 characters on a
/// non-loopback bind, a webhook key under 16 bytes once decoded (the
/// limits are the boundary cases, so an off-by-one fails here).
#[test]
fn weak_secrets_are_refused_by_key() {
    let fifteen = "t0k-0123456789a";
    let sixteen = "t0k-0123456789ab";
    let multibyte = "ñññññññññññññññ"; // 15 characters, 30 bytes
    for (bind, token, accepted) in [
        ("0.0.0.0:8080", fifteen, false),
        ("192.0.2.7:8080", fifteen, false),
        ("[::]:8080", fifteen, false),
        ("0.0.0.0:8080", multibyte, false),
        ("0.0.0.0:8080", sixteen, true),
        ("127.0.0.1:8080", "short", true),
        ("[::1]:8080", "short", true),
    ] {
        let toml = format!("[server]\nbind = \"{bind}\"\ntoken = \"{token}\"\n");
        let result = load_str(&toml, &[]).unwrap().validate();
        match (result, accepted) {
            (Ok(_), true) => {}
            (Err(err), false) => {
                assert_eq!(err.key, "server.token", "{err}");
                assert!(!err.to_string().contains(token), "{err}");
            }
            (result, _) => panic!("{bind} {token}: {result:?}"),
        }
    }
    // From the token file too, and from the environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{fifteen}\n")).unwrap();
    let toml = format!(
        "[server]\nbind = \"0.0.0.0:8080\"\ntoken_file = {:?}\n",
        file.display().to_string()
    );
    assert_eq!(invalid_key(&toml, &[]), "server.token");
    assert_eq!(
        invalid_key(
            "[server]\nbind = \"0.0.0.0:8080\"\n",
            &[("JOGG_RELAY__SERVER__TOKEN", fifteen)]
        ),
        "server.token"
    );

    // 15 and 16 bytes after base64 decoding.
    let short = "whsec_MDEyMzQ1Njc4OWFiY2Rl";
    let enough = "whsec_MDEyMzQ1Njc4OWFiY2RlZg==";
    let err = load_str(&format!("[callbacks]\nsecret = \"{short}\"\n"), &[])
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err.key, "callbacks.secret");
    assert!(!err.to_string().contains("MDEyMzQ1Njc4OWFiY2Rl"), "{err}");
    load_str(&format!("[callbacks]\nsecret = \"{enough}\"\n"), &[])
        .unwrap()
        .validate()
        .unwrap();
    std::fs::write(&file, format!("{short}\n")).unwrap();
    let toml = format!(
        "[callbacks]\nsecret_file = {:?}\n",
        file.display().to_string()
    );
    assert_eq!(invalid_key(&toml, &[]), "callbacks.secret");
    // The reusable check names whichever key it is given.
    let err =
        WebhookSecret::parse(SecretString::from(short), "callbacks.video_secret").unwrap_err();
    assert_eq!(err.key, "callbacks.video_secret");
    let err = webhook_secret(
        &SecretSetting(Some(short.into())),
        &None,
        "callbacks.video_secret",
    )
    .unwrap_err();
    assert_eq!(err.key, "callbacks.video_secret");
}

#[test]
fn secrets_come_from_files_without_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, "sk-file-123\n").unwrap();
    let toml = format!(
        "[jogg]\napi_key_file = {:?}\n",
        key_path.display().to_string()
    );
    let config = load_str(&toml, &[]).unwrap().validate().unwrap();
    assert_eq!(config.jogg.api_key.unwrap().expose_secret(), "sk-file-123");
}

#[test]
fn redacted_output_never_shows_secrets() {
    let settings = load_str(
        "[server]\ntoken = \"tok-SECRET-1\"\n[jogg]\napi_key = \"key-SECRET-2\"\n\
         [callbacks]\nsecret = \"whsec_c2VjcmV0LTMtbG9uZy1lbm91Z2gh\"\n",
        &[],
    )
    .unwrap();
    let config = settings.validate().unwrap();
    for rendering in [
        settings.to_redacted_toml(),
        format!("{settings:?}"),
        format!("{config:?}"),
    ] {
        for secret in [
            "tok-SECRET-1",
            "key-SECRET-2",
            "c2VjcmV0LTMtbG9uZy1lbm91Z2gh",
        ] {
            assert!(
                !rendering.contains(secret),
                "{secret} leaked in {rendering}"
            );
        }
    }
    assert!(settings.to_redacted_toml().contains("[redacted]"));
}

#[test]
fn video_secret_is_validated_named_and_redacted() {
    assert_eq!(
        invalid_key("[callbacks]\nvideo_secret = \"not-whsec\"\n", &[]),
        "callbacks.video_secret"
    );
    let settings = load_str(
        "[callbacks]\nvideo_secret = \"whsec_dmlkZW8tU0VDUkVULTQta2V5\"\n",
        &[],
    )
    .unwrap();
    let config = settings.validate().unwrap();
    assert_eq!(
        config.callbacks.video_secret.as_ref().map(|s| s.key()),
        Some(&b"video-SECRET-4-key"[..])
    );
    assert!(config.callbacks.secret.is_none());
    for rendering in [settings.to_redacted_toml(), format!("{config:?}")] {
        assert!(
            !rendering.contains("dmlkZW8tU0VDUkVULTQta2V5"),
            "{rendering}"
        );
    }
}

#[test]
fn webhook_secret_keeps_both_forms() {
    let secret = WebhookSecret::parse(
        SecretString::from("whsec_aGVsbG8sIHdlYmhvb2sgd29ybGQ="),
        "callbacks.secret",
    )
    .unwrap();
    assert_eq!(secret.key(), b"hello, webhook world");
    assert_eq!(
        secret.full().expose_secret(),
        "whsec_aGVsbG8sIHdlYmhvb2sgd29ybGQ="
    );
}

/// The adaptive schedule's keys come from the file or the environment,
/// the environment winning, and reach the validated configuration.
#[test]
fn adaptive_keys_layer_and_validate() {
    let defaults = Settings::default().validate().unwrap();
    assert_eq!(defaults.polling.strategy, PollStrategy::Adaptive);
    assert_eq!(
        defaults.polling.adaptive,
        AdaptiveSettings {
            step: 0.06,
            half_life: 100,
            warmup: 20,
            horizon: Duration::from_secs(48 * 3600),
        }
    );
    let toml = "[polling]\nstrategy = \"exponential\"\nadaptive_step = 0.2\n\
                adaptive_half_life = 7\nadaptive_warmup = 3\n";
    let config = load_str(toml, &[]).unwrap().validate().unwrap();
    assert_eq!(config.polling.strategy, PollStrategy::Exponential);
    assert_eq!(
        config.polling.adaptive,
        AdaptiveSettings {
            step: 0.2,
            half_life: 7,
            warmup: 3,
            horizon: Duration::from_secs(48 * 3600),
        }
    );
    let config = load_str(
        toml,
        &[
            ("JOGG_RELAY__POLLING__STRATEGY", "adaptive"),
            ("JOGG_RELAY__POLLING__ADAPTIVE_STEP", "0.5"),
            ("JOGG_RELAY__POLLING__ADAPTIVE_HALF_LIFE", "1000"),
            ("JOGG_RELAY__POLLING__ADAPTIVE_WARMUP", "1"),
        ],
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(config.polling.strategy, PollStrategy::Adaptive);
    assert_eq!(
        config.polling.adaptive,
        AdaptiveSettings {
            step: 0.5,
            half_life: 1_000,
            warmup: 1,
            horizon: Duration::from_secs(48 * 3600),
        }
    );
    // The smallest step is accepted too.
    let config = load_str("", &[("JOGG_RELAY__POLLING__ADAPTIVE_STEP", "0.001")])
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(config.polling.adaptive.step, 0.001);
}

/// `jogg.webhook_secret` (JoggAI's push key) must be at least 16 bytes,
/// counted in bytes (the boundary cases, so an off-by-one fails here); a
/// refusal names the key, never the value, whether the secret came from
/// the file, the environment or a `_file`; and only one form may be given.
#[test]
fn jogg_webhook_secret_is_checked_by_key_without_its_value() {
    let fifteen = "push-SECRET-15b";
    let sixteen = "push-SECRET-16by";
    assert_eq!((fifteen.len(), sixteen.len()), (15, 16));
    let err = load_str(&format!("[jogg]\nwebhook_secret = \"{fifteen}\"\n"), &[])
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err.key, "jogg.webhook_secret");
    assert!(!err.to_string().contains(fifteen), "{err}");
    let config = load_str(&format!("[jogg]\nwebhook_secret = \"{sixteen}\"\n"), &[])
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(
        config
            .jogg
            .webhook_secret
            .as_ref()
            .map(|s| s.expose_secret()),
        Some(sixteen)
    );
    // Bytes, not characters: 8 two-byte characters are 16 bytes.
    let wide = "ññññññññ";
    assert_eq!(wide.len(), 16);
    let config = load_str("", &[("JOGG_RELAY__JOGG__WEBHOOK_SECRET", wide)])
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(
        config
            .jogg
            .webhook_secret
            .as_ref()
            .map(|s| s.expose_secret()),
        Some(wide)
    );
    let err = load_str("", &[("JOGG_RELAY__JOGG__WEBHOOK_SECRET", fifteen)])
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err.key, "jogg.webhook_secret");
    assert!(!err.to_string().contains(fifteen), "{err}");

    // From a file, without its trailing newline (so 15 bytes + "\n" is
    // still short).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("push-secret");
    std::fs::write(&file, format!("{fifteen}\n")).unwrap();
    let from_file = format!(
        "[jogg]\nwebhook_secret_file = {:?}\n",
        file.display().to_string()
    );
    let err = load_str(&from_file, &[]).unwrap().validate().unwrap_err();
    assert_eq!(err.key, "jogg.webhook_secret");
    assert!(!err.to_string().contains(fifteen), "{err}");
    std::fs::write(&file, format!("{sixteen}\n")).unwrap();
    let config = load_str(&from_file, &[]).unwrap().validate().unwrap();
    assert_eq!(
        config
            .jogg
            .webhook_secret
            .as_ref()
            .map(|s| s.expose_secret()),
        Some(sixteen)
    );

    // Both forms: refused, naming the key and not the value.
    let both = format!(
        "[jogg]\nwebhook_secret = \"{sixteen}\"\nwebhook_secret_file = {:?}\n",
        file.display().to_string()
    );
    let err = load_str(&both, &[]).unwrap().validate().unwrap_err();
    assert_eq!(err.key, "jogg.webhook_secret");
    assert!(err.message.contains("jogg.webhook_secret_file"), "{err}");
    assert!(!err.to_string().contains(sixteen), "{err}");
    // An unquoted value is refused by key, without echoing it.
    let err = load_str("[jogg]\nwebhook_secret = 12345678901234567\n", &[]).unwrap_err();
    assert_eq!(err.key, "jogg.webhook_secret");
    assert!(!err.to_string().contains("12345678901234567"), "{err}");
}

/// `server.webhook_bind` needs the push secret and another address than
/// `server.bind`; a valid one reaches the configuration.
#[test]
fn webhook_bind_needs_the_secret_and_its_own_address() {
    let secret = "[jogg]\nwebhook_secret = \"push-SECRET-0123456789\"\n";
    let err = load_str("[server]\nwebhook_bind = \"127.0.0.1:8443\"\n", &[])
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err.key, "server.webhook_bind");
    assert!(err.message.contains("jogg.webhook_secret"), "{err}");
    assert_eq!(
        invalid_key(
            &format!(
                "[server]\nbind = \"127.0.0.1:8080\"\nwebhook_bind = \"127.0.0.1:8080\"\n{secret}"
            ),
            &[]
        ),
        "server.webhook_bind"
    );
    // Port 0 twice is two free ports the system picks, no clash.
    let config = load_str(
        &format!("[server]\nbind = \"127.0.0.1:0\"\nwebhook_bind = \"127.0.0.1:0\"\n{secret}"),
        &[],
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        config.server.webhook_bind,
        Some("127.0.0.1:0".parse().unwrap())
    );
    assert_eq!(
        invalid_key(
            &format!("[server]\nwebhook_bind = \"somewhere:8443\"\n{secret}"),
            &[]
        ),
        "server.webhook_bind"
    );
    let config = load_str(
        &format!("[server]\nbind = \"127.0.0.1:8080\"\nwebhook_bind = \"0.0.0.0:8443\"\n{secret}"),
        &[],
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        config.server.webhook_bind,
        Some("0.0.0.0:8443".parse().unwrap())
    );
    // From the environment as well; unset by default.
    let config = load_str(
        secret,
        &[("JOGG_RELAY__SERVER__WEBHOOK_BIND", "127.0.0.1:9443")],
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        config.server.webhook_bind,
        Some("127.0.0.1:9443".parse().unwrap())
    );
    assert_eq!(
        Settings::default().validate().unwrap().server.webhook_bind,
        None
    );
}

/// The push secret never shows in `check-config`'s rendering nor in the
/// debug forms of the settings and the configuration.
#[test]
fn the_push_secret_is_redacted() {
    let settings = load_str("[jogg]\nwebhook_secret = \"push-SECRET-0123456789\"\n", &[]).unwrap();
    let config = settings.validate().unwrap();
    let rendered = settings.to_redacted_toml();
    for rendering in [
        rendered.clone(),
        format!("{settings:?}"),
        format!("{config:?}"),
    ] {
        assert!(
            !rendering.contains("push-SECRET-0123456789"),
            "leaked in {rendering}"
        );
    }
    assert!(
        rendered.contains("webhook_secret = \"[redacted]\""),
        "{rendered}"
    );
    // The key is shown only when set, so an operator sees whether it is.
    let unset = Settings::default().to_redacted_toml();
    assert!(!unset.contains("webhook_secret"), "{unset}");
}

/// The push keys come from the environment too; `adopt_untracked` is a
/// boolean there like in the file, and off by default.
#[test]
fn push_keys_come_from_the_environment() {
    let defaults = Settings::default().validate().unwrap();
    assert!(defaults.jogg.webhook_secret.is_none());
    assert!(!defaults.jogg.adopt_untracked);
    let config = load_str(
        "",
        &[
            ("JOGG_RELAY__JOGG__WEBHOOK_SECRET", "env-push-SECRET-0123"),
            ("JOGG_RELAY__JOGG__ADOPT_UNTRACKED", "true"),
        ],
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        config
            .jogg
            .webhook_secret
            .as_ref()
            .map(|s| s.expose_secret()),
        Some("env-push-SECRET-0123")
    );
    assert!(config.jogg.adopt_untracked);
    // The environment wins over the file, both ways.
    let config = load_str(
        "[jogg]\nadopt_untracked = true\n",
        &[("JOGG_RELAY__JOGG__ADOPT_UNTRACKED", "false")],
    )
    .unwrap()
    .validate()
    .unwrap();
    assert!(!config.jogg.adopt_untracked);
    assert_eq!(
        invalid_key("", &[("JOGG_RELAY__JOGG__ADOPT_UNTRACKED", "maybe")]),
        "jogg.adopt_untracked"
    );
}

/// `polling.safety_net_interval` is in force only while pushes are
/// enabled; it must be a positive duration either way.
#[test]
fn safety_net_applies_only_with_a_push_secret() {
    let secret = "[jogg]\nwebhook_secret = \"push-SECRET-0123456789\"\n";
    assert_eq!(
        Settings::default().validate().unwrap().polling.safety_net,
        None
    );
    let config = load_str("[polling]\nsafety_net_interval = \"90s\"\n", &[])
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(config.polling.safety_net, None, "no pushes, no net");
    let config = load_str(secret, &[]).unwrap().validate().unwrap();
    assert_eq!(config.polling.safety_net, Some(Duration::from_secs(300)));
    let config = load_str(
        secret,
        &[("JOGG_RELAY__POLLING__SAFETY_NET_INTERVAL", "90s")],
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(config.polling.safety_net, Some(Duration::from_secs(90)));
    for value in ["0s", "soon", "-5m"] {
        for file in ["", secret] {
            let toml = format!("{file}[polling]\nsafety_net_interval = \"{value}\"\n");
            assert_eq!(
                invalid_key(&toml, &[]),
                "polling.safety_net_interval",
                "{value}"
            );
        }
    }
}

/// A PostgreSQL URL selects that engine; its password never shows: not in
/// `check-config`'s output, not in `Debug`, not in the URL kept for
/// messages, not in the error for a URL that does not validate.
#[test]
fn a_postgres_url_selects_postgres_and_its_password_is_redacted() {
    for scheme in ["postgres", "postgresql"] {
        let toml = format!(
            "[database]\nurl = \"{scheme}://relay:hunter2-pw@db.internal:5433/relay?password=q-pw&sslmode=require\"\n"
        );
        let settings = load_str(&toml, &[]).unwrap();
        let config = settings.validate().unwrap();
        let DatabaseBackend::Postgres { url } = &config.database.backend else {
            panic!("{scheme}: not PostgreSQL: {:?}", config.database);
        };
        assert!(
            url.expose_secret().contains("hunter2-pw"),
            "the URL is kept whole"
        );
        assert_eq!(config.database.sqlite_path(), None);
        for shown in [
            settings.to_redacted_toml(),
            format!("{settings:?}"),
            format!("{config:?}"),
            config.database.url.clone(),
        ] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("q-pw"),
                "{shown}"
            );
            assert!(shown.contains("db.internal"), "{shown}");
        }
    }
    let err = load_str(
        "[database]\nurl = \"postgres://relay:hunter2-pw@db/relay?sslmode=sometimes\"\n",
        &[],
    )
    .unwrap()
    .validate()
    .unwrap_err();
    assert_eq!(err.key, "database.url");
    assert!(!err.message.contains("hunter2"), "{}", err.message);
}

/// `database.url_file` holds the URL (trailing newline dropped), looked
/// up in systemd's credentials folder when relative; an unreadable file
/// or a bad URL in it is an error naming `database.url_file`, without the
/// password.
#[test]
fn the_database_url_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db-url");
    std::fs::write(&file, "postgres://relay:s3cret-pw@localhost/relay\n").unwrap();
    let toml = format!("[database]\nurl_file = {:?}\n", file.display().to_string());
    let settings = load_str(&toml, &[]).unwrap();
    let config = settings.validate().unwrap();
    let DatabaseBackend::Postgres { url } = &config.database.backend else {
        panic!("not PostgreSQL");
    };
    assert_eq!(
        url.expose_secret(),
        "postgres://relay:s3cret-pw@localhost/relay"
    );
    // The file is shown, not the default `url` it stands in for.
    let shown = settings.to_redacted_toml();
    assert!(!shown.contains("s3cret"), "{shown}");
    let database: toml::Table = toml::from_str::<toml::Table>(&shown).unwrap()["database"]
        .as_table()
        .unwrap()
        .clone();
    assert_eq!(
        database.get("url_file").and_then(toml::Value::as_str),
        Some(file.to_str().unwrap())
    );
    assert!(!database.contains_key("url"), "{shown}");

    std::fs::write(
        &file,
        "postgres://relay:s3cret-pw@localhost/relay?sslmode=x\n",
    )
    .unwrap();
    let err = load_str(&toml, &[]).unwrap().validate().unwrap_err();
    assert_eq!(err.key, "database.url_file");
    assert!(!err.message.contains("s3cret"), "{}", err.message);
}

/// The redaction of database URLs for messages, by its own cases: the
/// authority's password, a `password` parameter, and text that is not a
/// URL at all.
#[test]
fn database_urls_are_redacted_for_display() {
    assert_eq!(
        redact_database_url("postgres://u:p@h:1/d"),
        "postgres://u:redacted@h:1/d"
    );
    assert_eq!(
        redact_database_url("postgresql://h/d?user=u&password=p&sslmode=require"),
        "postgresql://h/d?user=u&password=redacted&sslmode=require"
    );
    assert_eq!(redact_database_url("postgres://u@h/d"), "postgres://u@h/d");
    assert_eq!(
        redact_database_url("sqlite://data/x.db"),
        "sqlite://data/x.db"
    );
    assert_eq!(
        redact_database_url("not a url p@ss@host"),
        "[redacted]@host"
    );
}

/// `server.console` is on by default and can be turned off in the file or
/// the environment (a boolean in both); anything else names the key.
#[test]
fn console_is_on_by_default_and_can_be_turned_off() {
    assert!(Settings::default().validate().unwrap().server.console);
    let off = load_str("[server]\nconsole = false\n", &[])
        .unwrap()
        .validate()
        .unwrap();
    assert!(!off.server.console);
    let off = load_str("", &[("JOGG_RELAY__SERVER__CONSOLE", "false")])
        .unwrap()
        .validate()
        .unwrap();
    assert!(!off.server.console);
    assert_eq!(
        invalid_key("", &[("JOGG_RELAY__SERVER__CONSOLE", "perhaps")]),
        "server.console"
    );
}
