//! Closes connections whose responses are not being read (README, "HTTP
//! API", under "Connections").
//!
//! hyper's header-read timer only runs while hyper waits for a request
//! head. While it writes a response it waits as long as the socket stays
//! full, so a client that pipelines requests and never reads would hold its
//! connection slot forever. [`WriteDeadline`] wraps the accepted socket and
//! fails a write that has made no progress for `server.write_timeout`, which
//! makes hyper drop the connection and free the slot.
//!
//! "No progress" rather than "a deadline per response": a client that reads,
//! however slowly, gets every byte through (large responses on slow links
//! are not cut off), and holds its slot no longer than a keep-alive client
//! that sends a request every `header_timeout` already can. What the cap on
//! connections guards against is slots held by clients that do nothing.
//!
//! No cap on requests per connection either: hyper serves pipelined
//! requests one at a time and reads ahead at most its bounded read buffer,
//! so a pipelining client costs the same as one sending those requests back
//! to back on keep-alive; with this deadline it must read its answers to
//! keep its slot, and a cap would also cut off well-behaved long-lived
//! clients.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error a stalled write fails with (kind [`io::ErrorKind::TimedOut`]).
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing of the response for {0:?}")]
pub struct WriteStalled(pub Duration);

/// A connection whose writes fail once they have made no progress for
/// `limit`; reads pass through untouched.
pub struct WriteDeadline<T> {
    /// The socket.
    inner: T,
    /// The longest a write, flush or shutdown may stay pending without
    /// progress.
    limit: Duration,
    /// Fires `limit` after the write side first returned `Pending` with no
    /// progress since; only meaningful while `armed`.
    timer: Pin<Box<Sleep>>,
    /// Whether the write side is stalled (its last poll was `Pending` or
    /// timed out).
    armed: bool,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner`; its writes may stall for at most `limit`.
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// Judges the outcome of a write-side poll. Any ready outcome means the
    /// socket is not stuck, so the stall clock stops; a pending one starts
    /// it (unless it is already running, so repeated polls of the same
    /// stalled write do not push the deadline back) and fails the write
    /// once it has run for `limit`.
    fn judge<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(Instant::now() + self.limit);
        }
        // Polling the timer registers this task's waker, so the stalled
        // write is polled again when the limit is reached even though the
        // socket never becomes writable.
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteStalled(self.limit),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.judge(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.judge(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.judge(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.judge(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_limit() {
        // The peer never reads: once the 64-byte pipe is full, writes stall.
        let (near, _far) = duplex(64);
        let mut near = WriteDeadline::new(near, LIMIT);
        let started = Instant::now();
        let err = near.write_all(&[7; 1000]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.get_ref().unwrap().is::<WriteStalled>(), "{err}");
        // Exactly the limit on tokio's paused clock: not earlier, not later.
        assert_eq!(started.elapsed(), LIMIT);
        // And it stays failed until the peer reads.
        let again = near.write_all(&[7; 1]).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_gets_everything() {
        let (near, mut far) = duplex(64);
        let mut near = WriteDeadline::new(near, LIMIT);
        const TOTAL: usize = 64 * 20;
        // The client reads a bufferful at a time, pausing just under the
        // limit before each read: every stall is shorter than the limit,
        // though the whole write takes many times longer.
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut buffer = [0u8; 64];
            loop {
                tokio::time::sleep(LIMIT - Duration::from_millis(1)).await;
                match far.read(&mut buffer).await.unwrap() {
                    0 => return received,
                    n => received.extend_from_slice(&buffer[..n]),
                }
            }
        });
        let started = Instant::now();
        let sent: Vec<u8> = (0..TOTAL).map(|i| i as u8).collect();
        near.write_all(&sent).await.unwrap();
        near.shutdown().await.unwrap();
        drop(near);
        assert!(started.elapsed() > LIMIT * 10, "{:?}", started.elapsed());
        assert_eq!(reader.await.unwrap(), sent);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_may_wait_longer_than_the_limit() {
        let (near, mut far) = duplex(64);
        let mut near = WriteDeadline::new(near, LIMIT);
        let writer = tokio::spawn(async move {
            tokio::time::sleep(LIMIT * 3).await;
            far.write_all(b"late").await.unwrap();
            far
        });
        let mut buffer = [0u8; 4];
        near.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"late");
        drop(writer.await.unwrap());
    }

    /// A socket whose flush never completes.
    struct StuckFlush;

    impl AsyncWrite for StuckFlush {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_that_never_completes_fails_after_the_limit() {
        let mut stuck = WriteDeadline::new(StuckFlush, LIMIT);
        let started = Instant::now();
        stuck.write_all(b"accepted").await.unwrap();
        let err = stuck.flush().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
    }
}
