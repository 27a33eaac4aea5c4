//! Connections as both servers accept them: a bounded number at a time, each remembering when
//! bytes last moved, so idle or stalled peers cannot hold file descriptors and memory forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// When bytes last moved on a connection.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { started: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let now = self.started.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// An accepted connection holding one of its server's connection slots. With a read deadline,
/// a read that waits longer than it fails with `TimedOut`, which closes the connection.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
    activity: Arc<Activity>,
    read_deadline: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, slot: OwnedSemaphorePermit, read_idle: Option<Duration>) -> Self {
        let activity = Arc::new(Activity::new());
        activity.touch();
        let read_deadline = read_idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        Self { io, _slot: slot, activity, read_deadline }
    }

    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.activity.touch();
                if let Some((idle, sleep)) = &mut this.read_deadline {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *idle);
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if let Some((idle, sleep)) = &mut this.read_deadline {
                    if sleep.as_mut().poll(cx).is_ready() {
                        let message = format!("nothing received for {idle:?}");
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if result.is_ready() {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if result.is_ready() {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts connections while a slot is free; one over the limit is closed at once (so the
/// kernel's backlog does not fill either). Accept errors such as running out of file
/// descriptors are logged and retried after a pause, never fatal.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    read_idle: Option<Duration>,
    server: &'static str,
    metrics: Arc<Metrics>,
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        max_connections: usize,
        read_idle: Option<Duration>,
        server: &'static str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { listener, slots: Arc::new(Semaphore::new(max_connections)), read_idle, server, metrics }
    }

    pub async fn accept(&self) -> Guarded<TcpStream> {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let _ = stream.set_nodelay(true);
                        return Guarded::new(stream, slot, self.read_idle);
                    }
                    Err(_) => {
                        self.metrics.connection_refused(self.server);
                        tracing::debug!(%peer, server = self.server, "connection limit reached; closing a new connection");
                    }
                },
                Err(e) => {
                    tracing::warn!(server = self.server, "accepting a connection failed: {e}; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Waits until every accepted connection has closed.
    pub async fn drained(&self, max_connections: usize) {
        let _ = self.slots.acquire_many(u32::try_from(max_connections).unwrap_or(u32::MAX)).await;
    }

    /// The connections as a stream, for tonic.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Guarded<TcpStream>, io::Error>> {
        futures_util::stream::unfold(self, |acceptor| async move {
            let conn = acceptor.accept().await;
            Some((Ok(conn), acceptor))
        })
    }
}
