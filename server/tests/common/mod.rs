//! What the server's test binaries share: an engine and a server on free loopback ports,
//! stopped (every connection ended in time) and closed when dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tradeshard_engine::{Engine, Options};
use tradeshard_server::{ReserveNothingForLarge, Server, ServerOptions};

#[global_allocator]
static ALLOCATOR: ReserveNothingForLarge = ReserveNothingForLarge(std::alloc::System);

pub fn loopback() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

pub struct Running {
    _dir: tempfile::TempDir,
    pub engine: Option<Engine>,
    pub server: Option<Server>,
}

impl Running {
    pub fn start(options: ServerOptions) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut engine_options = Options::new(dir.path());
        engine_options.physical_shards = Some(2);
        engine_options.executors = Some(2);
        let engine = Engine::open(engine_options).unwrap();
        let options = ServerOptions { kafka: loopback(), stats: loopback(), metrics: loopback(), ..options };
        let server = Server::start(engine.handle(), options).unwrap();
        Running { _dir: dir, engine: Some(engine), server: Some(server) }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn kafka(&self) -> TcpStream {
        let stream = TcpStream::connect(self.server().kafka_addr().unwrap()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        assert!(self.server.take().unwrap().stop(), "every connection ended in time");
        self.engine.take().unwrap().close().unwrap();
    }
}

/// Sends `request` (an HTTP request's head) on `stream` and reads the answer to its end.
pub fn http(mut stream: TcpStream, request: &[u8]) -> String {
    stream.write_all(request).unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page
}
