//! Headless Chromium driven over WebDriver (fantoccini), for the console's
//! tests: [`browser`] starts the distribution's `chromedriver` on a free
//! loopback port and a fresh browser profile, and the [`Browser`] kills
//! the driver's whole process group when dropped.
//!
//! Without `chromedriver` and `chromium` on the `PATH`, [`browser`] says
//! loudly that the test was skipped and returns `None`; with
//! `JOGG_RELAY_REQUIRE_BROWSER=1` (CI sets it) it panics instead.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use tempfile::TempDir;

/// The variable that forbids skipping.
const REQUIRE: &str = "JOGG_RELAY_REQUIRE_BROWSER";

/// A running browser session.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Option<Child>,
    _profile: TempDir,
}

/// `name` found on the `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Reports the skip (past the harness's capture) or panics under
/// `JOGG_RELAY_REQUIRE_BROWSER=1`.
fn skip(why: &str) {
    let line =
        format!("SKIPPED: browser test ({why}; install chromium and chromium-driver to run it)");
    if std::env::var_os(REQUIRE).is_some_and(|value| value == "1") {
        panic!("{line} ({REQUIRE}=1 forbids skipping)");
    }
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A free loopback port (bound, read, released: chromedriver takes it the
/// moment after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts chromedriver and a headless Chromium, or `None` (reported) when
/// they are not installed.
pub async fn browser() -> Option<Browser> {
    let Some(driver_path) = on_path("chromedriver") else {
        skip("no chromedriver on the PATH");
        return None;
    };
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(on_path)
    else {
        skip("no chromium on the PATH");
        return None;
    };
    let port = free_port();
    let mut driver = Command::new(&driver_path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, so that the browser it starts goes with
        // it (see `Drop`).
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    // chromedriver says when it listens; wait for that line, within a
    // deadline.
    let stdout = driver.stdout.take().expect("chromedriver's stdout");
    let (lines, started) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("started successfully") {
                let _ = lines.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = tokio::task::spawn_blocking(move || {
        started.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    })
    .await
    .expect("the waiting thread");
    let mut browser_guard = DriverGuard(Some(driver));
    ready.expect("chromedriver reported that it started");

    let profile = tempfile::tempdir().expect("a browser profile folder");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                // Containers and CI run as root, where Chromium's sandbox
                // cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    Some(Browser {
        client,
        driver: browser_guard.0.take(),
        _profile: profile,
    })
}

/// Kills chromedriver if the session never started.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            kill_group(child);
        }
    }
}

/// Kills `child`'s process group (chromedriver and the browser it
/// started) and reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group;
        // it touches no memory.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

impl Browser {
    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|err| panic!("open {url}: {err}"));
    }

    /// The current URL's path.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the current URL")
            .path()
            .to_owned()
    }

    /// The text of the element `css`.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css}: {err}"))
            .text()
            .await
            .expect("its text")
    }

    /// Waits (30 s at most) for an element matching `css`: a form's
    /// submission may still be loading its answer when a click returns.
    pub async fn wait_for(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css} appeared: {err}"));
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("a search")
            .len()
    }

    /// The attributes `names` of every element matching `css`, in
    /// document order (`""` for one an element lacks).
    pub async fn attributes(&self, css: &str, names: &[&str]) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for element in self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("a search")
        {
            let mut row = Vec::new();
            for name in names {
                let value = element.attr(name).await.expect("an attribute read");
                row.push(value.unwrap_or_default());
            }
            rows.push(row);
        }
        rows
    }

    /// Types `text` into the field `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css}: {err}"))
            .send_keys(text)
            .await
            .expect("typed");
    }

    /// Clicks `css` and waits for the page it leads to.
    pub async fn click(&self, css: &str) {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css}: {err}"));
        element.click().await.expect("clicked");
    }

    /// Saves a screenshot of the page as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("the screenshots folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    /// [`Browser::screenshot`] in a window `height` pixels tall, for a page
    /// longer than the usual window (the window keeps that height).
    pub async fn screenshot_tall(&self, name: &str, height: u32) -> PathBuf {
        self.client
            .set_window_size(1280, height)
            .await
            .expect("the window resized");
        self.screenshot(name).await
    }

    /// Ends the session (the browser quits) and the driver.
    pub async fn finish(mut self) {
        let _ = self.client.clone().close().await;
        if let Some(mut driver) = self.driver.take() {
            kill_group(&mut driver);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(driver) = &mut self.driver {
            kill_group(driver);
        }
    }
}

/// `target/screenshots`: the test binary is `target/<profile>/deps/it-…`.
fn screenshots_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .map_or_else(|| Path::new("target").to_owned(), Path::to_owned)
        .join("screenshots")
}
