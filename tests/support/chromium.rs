//! Headless Chromium driven over WebDriver (chromedriver) with fantoccini, for the browser
//! tests (tests/browser.rs, tests/browser_client.rs). Included with
//! `#[path = "support/chromium.rs"] mod chromium;`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `CHROME` / `CHROMEDRIVER` pointing at a
//! browser and its matching driver). Without them [`chromium`] prints `SKIPPED` and returns
//! `None`, unless `WSHUB_REQUIRE_CHROMIUM=1`, which makes a missing browser a failure (CI sets
//! it).
#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// How long starting the driver or the browser session may take.
const START: Duration = Duration::from_secs(15);

/// The flags that work on these machines (no sandbox: we run as root in a container).
pub const FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];

/// One browser at a time: the machine has two cores.
pub static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The browser and driver binaries, or `None` (after saying so loudly) when they are missing.
pub fn chromium() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, names: &[&str]| -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(var) {
            return Some(PathBuf::from(path)).filter(|p| p.is_file());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        dirs.push("/usr/bin".into());
        names
            .iter()
            .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
            .find(|p| p.is_file())
    };
    let chrome = find("CHROME", &["chromium", "chromium-browser", "google-chrome"]);
    let driver = find("CHROMEDRIVER", &["chromedriver"]);
    match (chrome, driver) {
        (Some(chrome), Some(driver)) => Some((chrome, driver)),
        _ if std::env::var("WSHUB_REQUIRE_CHROMIUM").as_deref() == Ok("1") => {
            panic!("WSHUB_REQUIRE_CHROMIUM=1 but no chromium and chromedriver were found")
        }
        _ => {
            // Straight to the file descriptor: the test harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: no chromium found (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// A chromedriver process and one browser session; the browser's windows are the pages.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts the driver and a browser with [`FLAGS`].
    pub async fn launch(chrome: &Path, driver: &Path) -> Browser {
        Browser::launch_with(chrome, driver, &[]).await
    }

    /// Starts the driver and a browser with [`FLAGS`] and `extra` flags.
    pub async fn launch_with(chrome: &Path, driver: &Path, extra: &[&str]) -> Browser {
        static PROFILES: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "wshub-chromium-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();

        // Port 0: chromedriver picks a free port and prints it.
        let mut driver = Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let stdout = driver.stdout.take().unwrap();
        let port = timeout(START, async {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some((_, port)) = line.split_once("started successfully on port ") {
                    return port.trim_end_matches('.').parse::<u16>().unwrap();
                }
            }
            panic!("chromedriver exited before it was ready");
        })
        .await
        .expect("chromedriver ready in time");

        let mut args: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
        args.extend(extra.iter().map(|f| f.to_string()));
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push("--window-size=1280,900".into());
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chrome, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = timeout(
            START,
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("browser session in time")
        .expect("browser session");
        Browser {
            client,
            driver,
            profile,
        }
    }

    /// Ends the session (chromedriver closes the browser), then the driver.
    pub async fn quit(mut self) {
        let _ = timeout(START, self.client.clone().close()).await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed assertion: take the browser down with the driver (its process group).
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
