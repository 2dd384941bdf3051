//! Shared test scaffolding: an in-process relay on port 0 with a temporary
//! database ([`spawn_app`]), and the real binary as a child process
//! ([`RelayProcess`]).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jogg_relay::app::{App, AppError};
use jogg_relay::config::{Config, SecretSetting, Settings};
use jogg_relay::delivery::{self, Deliverer};
use jogg_relay::domain::Millis;
use jogg_relay::poller::{Outcome, Poller};
use jogg_relay::sim::{SIM_API_KEY, SimUpstream};
use jogg_relay::store::Store;
use jogg_relay::store::test_support::Table;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[cfg(unix)]
pub mod browser;
#[cfg(unix)]
mod postgres;
mod stalling_proxy;
#[cfg(unix)]
pub use postgres::{scratch_postgres, skip_without_postgres};
pub use stalling_proxy::StallingProxy;

/// The bearer token every [`spawn_app`] relay requires.
pub const TOKEN: &str = "test-token-0123456789";

/// A relay running inside the test process.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the second listener serving only JoggAI's
    /// pushes, when spawned with one
    /// ([`spawn_manual_app_with_push_listener`]).
    pub push_base: Option<String>,
    /// The configuration it runs with.
    pub config: Config,
    /// Client with keep-alive; requests add the token themselves.
    pub client: reqwest::Client,
    /// Cancels the relay.
    pub shutdown: CancellationToken,
    /// The relay task.
    pub task: JoinHandle<Result<(), AppError>>,
    /// Holds the database folder.
    pub dir: TempDir,
    /// The JoggAI simulator the relay polls.
    pub sim: SimUpstream,
    /// The poller, when the test drives it (see [`spawn_manual_app`]).
    pub poller: Option<Poller>,
    /// The delivery worker, when the test drives it.
    pub deliverer: Option<Deliverer>,
}

/// Settings for a test relay: a fresh database in `dir`, a token, and the
/// simulator at `sim_url` as upstream.
pub fn test_settings(dir: &Path, sim_url: &str) -> Settings {
    let mut settings = Settings::default();
    settings.database.url = format!("sqlite://{}", dir.join("relay.db").display());
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.token = SecretSetting(Some(TOKEN.into()));
    settings.jogg.base_url = sim_url.to_owned();
    settings.jogg.api_key = SecretSetting(Some(SIM_API_KEY.into()));
    settings
}

/// Starts a relay with the test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a relay with the test settings, adjusted by `customize`; its poll
/// loop runs on its own.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    start(customize, false, false).await
}

/// Starts a relay whose workers do not run by themselves: the test calls
/// [`TestApp::step`] (poller) and [`TestApp::deliver`] (delivery). First
/// polls are due at once.
pub async fn spawn_manual_app(customize: impl FnOnce(&mut Settings)) -> TestApp {
    start(
        |settings| {
            settings.polling.first_after = "0s".into();
            customize(settings);
        },
        true,
        false,
    )
    .await
}

/// [`spawn_manual_app`] with a second listener on another loopback port
/// serving only `POST /webhooks/jogg` ([`App::serve_pushes_on`], what
/// `server.webhook_bind` makes `serve` do), at [`TestApp::push_base`].
pub async fn spawn_manual_app_with_push_listener(customize: impl FnOnce(&mut Settings)) -> TestApp {
    start(
        |settings| {
            settings.polling.first_after = "0s".into();
            customize(settings);
        },
        true,
        true,
    )
    .await
}

async fn start(
    customize: impl FnOnce(&mut Settings),
    manual_poller: bool,
    push_listener: bool,
) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary folder");
    let sim = SimUpstream::start().await.expect("start the simulator");
    let mut settings = test_settings(dir.path(), sim.base_url.as_str());
    customize(&mut settings);
    let config = settings.validate().expect("valid test configuration");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let mut relay = App::build(config.clone()).await.expect("build the relay");
    let mut push_base = None;
    if push_listener {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        push_base = Some(format!("http://{}", listener.local_addr().unwrap()));
        relay.serve_pushes_on(listener);
    }
    let (poller, deliverer) = if manual_poller {
        (relay.take_poller(), relay.take_deliverer())
    } else {
        (None, None)
    };
    let task = tokio::spawn(relay.run(listener, shutdown.clone()));
    let app = TestApp {
        base,
        push_base,
        config,
        client: jogg_relay::outbound::client_builder().build().unwrap(),
        shutdown,
        task,
        dir,
        sim,
        poller,
        deliverer,
    };
    app.wait_until_ready().await;
    app
}

/// The configuration file of a real-binary test: `[server]` on loopback
/// port 0 with [`TOKEN`], `[database]` at `dir/relay.db` unless told
/// otherwise, then whatever sections the test adds. Every test of the
/// binary writes its configuration through this, so the file's first five
/// lines are always the same (a test that checks a reported line number
/// relies on that).
pub struct RelayConfig {
    dir: PathBuf,
    database: PathBuf,
    server_keys: String,
    extra: String,
}

impl RelayConfig {
    /// A configuration written into `dir`, its database `dir/relay.db`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            database: dir.join("relay.db"),
            server_keys: String::new(),
            extra: String::new(),
        }
    }

    /// The database file (it and its folders need not exist).
    pub fn database(mut self, path: &Path) -> Self {
        self.database = path.to_owned();
        self
    }

    /// More `[server]` keys, one `key = value` per line: TOML allows no
    /// second `[server]` table in `extra`.
    pub fn server_keys(mut self, keys: &str) -> Self {
        self.server_keys.push_str(keys);
        self
    }

    /// More sections (TOML text, each line ending in a newline), after
    /// `[database]`.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    /// Writes `dir/relay.toml`; its path.
    pub fn write(self) -> PathBuf {
        let path = self.dir.join("relay.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{}\
                 [database]\nurl = \"sqlite://{}\"\n{}",
                self.server_keys,
                self.database.display(),
                self.extra,
            ),
        )
        .expect("write the configuration");
        path
    }
}

/// An RFC 3339 timestamp as the API shows it, as [`Millis`].
pub fn api_millis(rfc3339: &Value) -> Millis {
    let text = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {rfc3339}"));
    let at = humantime::parse_rfc3339(text).expect("an RFC 3339 timestamp");
    Millis(
        at.duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64,
    )
}

/// A response reduced to what tests assert on.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Content type, if any.
    pub content_type: String,
    /// Body parsed as JSON (`Value::Null` when it is not JSON).
    pub json: Value,
}

impl Reply {
    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    /// Asserts a JSON error with the given status and returns its code.
    pub fn assert_json_error(&self, status: u16) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        assert!(self.json["error"]["message"].is_string(), "{self:?}");
        self.error_code()
    }
}

impl TestApp {
    /// Sends a request with the token; `body` is sent as JSON when given.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        reply(request.send().await.expect("request sent")).await
    }

    /// Sends raw bytes with the given content type and the token.
    pub async fn send_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let request = self
            .client
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body);
        reply(request.send().await.expect("request sent")).await
    }

    /// `POST /v1/videos`.
    pub async fn enqueue(&self, body: Value) -> Reply {
        self.send("POST", "/v1/videos", Some(&body)).await
    }

    /// `GET /v1/videos/{id}`.
    pub async fn video(&self, id: &str) -> Reply {
        self.send("GET", &format!("/v1/videos/{id}"), None).await
    }

    /// The text of `GET /metrics` (no token needed).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// A second handle on the relay's database, for assertions.
    pub async fn store(&self) -> Store {
        Store::open(&self.config.database).await.unwrap()
    }

    /// Number of rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        let store = self.store().await;
        let table = match table {
            "videos" => Table::Videos,
            "transitions" => Table::Transitions,
            "deliveries" => Table::Deliveries,
            other => panic!("unknown table {other}"),
        };
        let count = store.row_count(table).await.unwrap();
        store.close().await;
        count
    }

    /// The listener is bound before the relay starts, so this first request
    /// simply waits in the accept queue until the relay serves it.
    async fn wait_until_ready(&self) {
        let health = self
            .client
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .expect("relay answers");
        assert!(health.status().is_success(), "relay is healthy");
    }

    /// One poller step at `now` (manual-poller apps only).
    pub async fn step(&self, now: Millis) -> Outcome {
        self.poller
            .as_ref()
            .expect("spawned with a manual poller")
            .step(now)
            .await
            .expect("poll step")
    }

    /// Steps until a step finds nothing due; returns the number of steps
    /// that worked. After each step that worked, the clock it is given moves
    /// at least 2 ms on (past a 1 ms poll interval with its jitter), so a
    /// step that finished in under a millisecond does not end the loop
    /// while the next poll is due the moment after. Bounded, so a bug
    /// cannot hang a test.
    pub async fn step_until_idle(&self) -> usize {
        let mut now = Millis::now();
        for worked in 0..10_000 {
            // The step records its results at `now` plus the time it took
            // (its step clock), so the next step starts after that, not
            // merely after `now`: under load a step takes longer than the
            // poll interval, and `now` may run ahead of the wall clock.
            let started = tokio::time::Instant::now();
            match self.step(now).await {
                Outcome::Worked(_) => {
                    let step_end = now.plus(started.elapsed() + Duration::from_millis(2));
                    now = Millis::now().max(step_end);
                }
                _ => return worked,
            }
        }
        panic!("the poller never went idle");
    }

    /// One delivery step at `now` (manual apps only).
    pub async fn deliver(&self, now: Millis) -> delivery::Outcome {
        self.deliverer
            .as_ref()
            .expect("spawned with manual workers")
            .step(now)
            .await
            .expect("delivery step")
    }

    /// Stops the relay and waits for a clean exit.
    pub async fn stop(mut self) -> TempDir {
        // The manual workers hold writer handles; the writer (and so the
        // relay) only finishes once they are gone.
        self.poller = None;
        self.deliverer = None;
        self.shutdown.cancel();
        self.task
            .await
            .expect("relay task")
            .expect("clean shutdown");
        self.dir
    }
}

/// Reduces a response to a [`Reply`].
pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = response.bytes().await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        json,
    }
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

/// Path of the `jogg-relay` binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jogg-relay"))
}

/// Runs the binary to completion with only the given environment variables
/// (plus `PATH`), returning (exit code, stdout, stderr).
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run jogg-relay");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The seed of a randomized test: `JOGG_RELAY_TEST_SEED` when set, else a
/// random one. Printed either way (the harness shows it when the test
/// fails), so any run can be repeated.
pub fn test_seed() -> u64 {
    let seed = std::env::var("JOGG_RELAY_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("JOGG_RELAY_TEST_SEED={seed}");
    seed
}

/// A proptest configuration whose generator is seeded with [`test_seed`]
/// (case counts and the rest still come from `PROPTEST_*`).
pub fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        rng_seed: proptest::test_runner::RngSeed::Fixed(test_seed()),
        ..proptest::test_runner::Config::default()
    }
}

/// `jogg-relay serve` as a child process.
pub struct RelayProcess {
    /// The child.
    pub child: Child,
    /// Where its API listens.
    pub address: SocketAddr,
    /// The lines it wrote to standard error up to and including the one
    /// reporting its address (read by `start`, so not in `log`).
    pub startup: Vec<String>,
    /// Every later line it writes to standard error arrives here.
    pub log: mpsc::Receiver<String>,
    /// The thread forwarding standard error to `log`; it ends when the
    /// child closes standard error (when it exits).
    reader: Option<std::thread::JoinHandle<()>>,
    /// Client for [`RelayProcess::send`] and its shorthands.
    client: reqwest::Client,
}

impl RelayProcess {
    /// Starts `serve` with `config_file`, binding port 0, and waits for the
    /// address it reports.
    pub fn start(config_file: &Path, extra_env: &[(&str, &str)]) -> Self {
        Self::start_after(config_file, extra_env, None)
    }

    /// [`RelayProcess::start`], through `sh -c` when `prelude` is given so
    /// that it (a umask, a file size limit: std has no call for either)
    /// applies to the relay. The shell `exec`s the relay, so the child's
    /// pid is the relay's.
    pub fn start_after(
        config_file: &Path,
        extra_env: &[(&str, &str)],
        prelude: Option<&str>,
    ) -> Self {
        let mut command = match prelude {
            Some(prelude) => {
                let mut shell = Command::new("sh");
                shell
                    .args(["-c", &format!("{prelude}; exec \"$0\" \"$@\"")])
                    .arg(binary());
                shell
            }
            None => Command::new(binary()),
        };
        let mut child = command
            .args(["--config", config_file.to_str().unwrap(), "serve"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            // Never the real JoggAI: a closed loopback port unless the test
            // points it at a simulator.
            .env("JOGG_RELAY__JOGG__BASE_URL", "http://127.0.0.1:1")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jogg-relay serve");
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Blocking on the child's own output (not a sleep): the relay logs its
        // bound address once it is ready to accept connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut startup = Vec::new();
        let address = loop {
            let line = log
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .expect("relay reported its address");
            startup.push(line);
            let line = startup.last().unwrap();
            // Text logs say `address=IP:PORT`, JSON logs `"address":"IP:PORT"`.
            if let Some(rest) = line.split("address=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.parse().expect("socket address");
            }
            if let Some(rest) = line.split("\"address\":\"").nth(1) {
                let addr = rest.split('"').next().unwrap();
                break addr.parse().expect("socket address");
            }
        };
        Self {
            child,
            address,
            startup,
            log,
            reader: Some(reader),
            client: jogg_relay::outbound::client_builder().build().unwrap(),
        }
    }

    /// Sends `method path` with `token` as bearer (none when `None`) and
    /// `body` as JSON when given.
    pub async fn send_as(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        reply(request.send().await.expect("request sent")).await
    }

    /// Sends `method path` with [`TOKEN`], `body` as JSON when given.
    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.send_as(method, path, Some(TOKEN), body).await
    }

    /// Authorised `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }

    /// Authorised `POST path` of `body` as JSON.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send("POST", path, Some(&body)).await
    }

    /// The text of `GET /metrics` (no token needed).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// Waits (at most a minute) for the child to exit, then for every line
    /// it wrote to be in `log` (or in a receiver taken earlier): reading the
    /// log right after `child.wait()` could miss lines the reader thread
    /// had not forwarded yet.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the relay did not exit within a minute");
            }
            // A child's exit has no blocking wait with a timeout.
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader thread");
        }
        status
    }

    /// Takes the log receiver (to read it on a blocking thread).
    pub fn take_log(&mut self) -> mpsc::Receiver<String> {
        std::mem::replace(&mut self.log, mpsc::channel().1)
    }

    /// `http://ADDRESS`.
    pub fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Sends a signal by name (`TERM`, `KILL`) with the system's `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `method target` as raw HTTP/1.1 (bypassing any client-side URL
/// normalisation, which would turn `%2e%2e` into `..`) and returns the
/// status and the JSON body.
pub async fn raw_request(base: &str, method: &str, target: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Reply {
        status,
        content_type,
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}
