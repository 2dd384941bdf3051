//! A TCP front for a PostgreSQL server's Unix socket that can fall silent
//! without closing anything: what a relay sees when the server's machine
//! dies or the network between them is cut. No FIN, no RST, no error:
//! statements in flight and new connections simply get no answer, which
//! a stopped server (it refuses connections at once) never shows.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Which connections carry bytes: those opened in `generation`, unless
/// `silent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forwarding {
    generation: u64,
    silent: bool,
}

/// The proxy (see the module docs); everything it runs stops when it is
/// dropped.
pub struct StallingProxy {
    /// The loopback port the relay connects to.
    pub port: u16,
    state: watch::Sender<Forwarding>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl StallingProxy {
    /// Listens on a free loopback port and forwards each connection to
    /// the server's socket at `server`.
    pub async fn start(server: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (state, _) = watch::channel(Forwarding {
            generation: 0,
            silent: false,
        });
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let accepting = {
            let (state, tasks) = (state.clone(), Arc::clone(&tasks));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let generation = state.borrow().generation;
                    let forwarding = state.subscribe();
                    let server = server.clone();
                    tasks.lock().unwrap().spawn(async move {
                        let Ok(upstream) = UnixStream::connect(&server).await else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = upstream.into_split();
                        tokio::join!(
                            pipe(client_read, server_write, forwarding.clone(), generation),
                            pipe(server_read, client_write, forwarding, generation),
                        );
                    });
                }
            }
        };
        tasks.lock().unwrap().spawn(accepting);
        Self { port, state, tasks }
    }

    /// The URL of `database_url`'s database through this proxy, over TCP.
    pub fn url_for(&self, database_url: &str) -> String {
        let direct = url::Url::parse(database_url).unwrap();
        format!(
            "postgres://{}@127.0.0.1:{}{}",
            direct.username(),
            self.port,
            direct.path()
        )
    }

    /// Every connection, open or new, stops carrying bytes.
    pub fn cut(&self) {
        self.state.send_modify(|state| state.silent = true);
    }

    /// A new server answers in the old one's place: connections opened
    /// from now on are forwarded, those opened before (the old server's)
    /// stay silent for good.
    pub fn fail_over(&self) {
        self.state.send_modify(|state| {
            state.generation += 1;
            state.silent = false;
        });
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// Copies `from` to `to` while the connection of `generation` may carry
/// bytes; holds whatever it has read (and stops reading) while it may not.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut forwarding: watch::Receiver<Forwarding>,
    generation: u64,
) {
    let open = |state: &Forwarding| !state.silent && state.generation == generation;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        if forwarding.wait_for(open).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if forwarding.wait_for(open).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
