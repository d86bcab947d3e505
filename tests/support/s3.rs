//! The S3 test fixture (see the README's "S3 zones" section). It picks, and prints
//! which it picked:
//!
//! 1. `TIERKEEP_TEST_S3_ENDPOINT` (credentials in `AWS_ACCESS_KEY_ID` /
//!    `AWS_SECRET_ACCESS_KEY`, region in `AWS_REGION`): an external server;
//! 2. else, if a Docker API answers (`DOCKER_HOST=unix://…`, or `/var/run/docker.sock`;
//!    `podman system service` serves one): through `testcontainers`, MinIO where its
//!    image can be pulled, else the locally built Garage image
//!    (`TIERKEEP_TEST_GARAGE_IMAGE`, default `localhost/tierkeep-garage:2.5.0`, see
//!    `.ci/garage-image`);
//! 3. else, if a `garage` binary is found (`TIERKEEP_TEST_GARAGE`, or on `PATH`): a
//!    single-node Garage started in a temporary directory, a real disk-backed S3 server
//!    in its own process;
//! 4. else: an s3s-fs server started in this process on 127.0.0.1, real HTTP and SigV4,
//!    backed by a temporary directory.
//!
//! Every test uses its own buckets, so one server serves a whole test binary.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Which server the fixture runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    External,
    MinioContainer,
    GarageContainer,
    Garage,
    InProcess,
    /// moto's standalone server: an emulator, used for what the others lack (S3 Object
    /// Lock is enforced there).
    Moto,
}

/// A running S3 server.
pub struct S3 {
    pub kind: Kind,
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    inner: Mutex<Inner>,
}

enum Inner {
    None,
    Container {
        container: Box<testcontainers::Container<testcontainers::GenericImage>>,
        /// The shell that removes the container once this test process is gone.
        _reaper: Child,
    },
    Garage {
        child: Option<Child>,
        bin: PathBuf,
        config: PathBuf,
        _dir: tempfile::TempDir,
    },
    Moto {
        child: Child,
        pidfile: PathBuf,
        _dir: tempfile::TempDir,
    },
    InProcess {
        runtime: tokio::runtime::Runtime,
        task: Option<tokio::task::JoinHandle<()>>,
        port: u16,
        root: tempfile::TempDir,
    },
}

/// Says which server the fixture started, on the process's standard error itself: the
/// test harness captures `eprintln!` of passing tests, and CI's log must show it.
macro_rules! announce {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("random");
    hex::encode(buf)
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn find_garage() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TIERKEEP_TEST_GARAGE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    })
}

/// The Docker API's unix socket, when one answers `GET /_ping`.
fn docker_socket() -> Option<PathBuf> {
    use std::io::{Read, Write};
    let path = match std::env::var("DOCKER_HOST") {
        Ok(h) => PathBuf::from(h.strip_prefix("unix://")?),
        Err(_) => PathBuf::from("/var/run/docker.sock"),
    };
    let mut sock = std::os::unix::net::UnixStream::connect(&path).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    sock.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    let _ = sock.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.").then_some(path)
}

/// The server of this test binary, started on first use.
pub fn shared() -> &'static S3 {
    static S3_SERVER: OnceLock<S3> = OnceLock::new();
    S3_SERVER.get_or_init(start)
}

/// A server of its own, for a test that stops and restarts it.
pub fn dedicated() -> S3 {
    start()
}

fn start() -> S3 {
    if let Ok(endpoint) = std::env::var("TIERKEEP_TEST_S3_ENDPOINT") {
        announce!("S3 fixture: external server at {endpoint}");
        return S3 {
            kind: Kind::External,
            endpoint,
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            access_key: std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID"),
            secret_key: std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY"),
            inner: Mutex::new(Inner::None),
        };
    }
    if let Some(socket) = docker_socket() {
        return start_container(&socket);
    }
    if let Some(bin) = find_garage() {
        return start_garage(bin);
    }
    start_in_process()
}

/// Removes container `id` through the Docker API once this test process is gone
/// (statics are never dropped, so testcontainers' own clean-up cannot be relied on).
fn reaper(socket: &Path, id: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(
            "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; \
             curl -s --unix-socket \"$1\" -X DELETE \"http://d/containers/$2?force=true&v=true\" \
             >/dev/null",
        )
        .arg(std::process::id().to_string())
        .arg(socket)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the container reaper")
}

/// Publishes every mapped port on the host's loopback only (testcontainers binds all
/// interfaces by default).
fn loopback_only(config: &mut testcontainers::bollard::models::HostConfig) {
    for bindings in config.port_bindings.iter_mut().flat_map(|m| m.values_mut()) {
        for binding in bindings.iter_mut().flatten() {
            binding.host_ip = Some("127.0.0.1".into());
        }
    }
}

/// MinIO, or (when its image cannot be pulled) the local Garage image, through
/// testcontainers. The S3 port is mapped to a fixed free host port, so that a stopped
/// and started container answers where it did, with its data.
fn start_container(socket: &Path) -> S3 {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::SyncRunner;
    use testcontainers::{GenericImage, ImageExt};
    let port = free_port();
    let (user, pass) = ("tierkeep", format!("tk{}", random_hex(12)));
    // A pull that failed once (no registry) is not tried again by this test process.
    static MINIO_UNAVAILABLE: OnceLock<String> = OnceLock::new();
    let minio_error = match MINIO_UNAVAILABLE.get() {
        Some(e) => e.clone(),
        None => {
            let minio = GenericImage::new("minio/minio", "latest")
                .with_exposed_port(9000.tcp())
                .with_wait_for(WaitFor::message_on_either_std("API:"))
                .with_mapped_port(port, 9000.tcp())
                .with_host_config_modifier(loopback_only)
                .with_env_var("MINIO_ROOT_USER", user)
                .with_env_var("MINIO_ROOT_PASSWORD", &pass)
                .with_cmd(["server", "/data"])
                .start();
            match minio {
                Ok(container) => {
                    wait_for_port(port, "MinIO");
                    announce!(
                        "S3 fixture: MinIO in container {} (testcontainers, {}) on 127.0.0.1:{port}",
                        container.id(),
                        socket.display()
                    );
                    return in_container(
                        Kind::MinioContainer,
                        socket,
                        container,
                        port,
                        "us-east-1",
                        (user.into(), pass),
                    );
                }
                Err(e) => MINIO_UNAVAILABLE.get_or_init(|| e.to_string()).clone(),
            }
        }
    };
    let image = std::env::var("TIERKEEP_TEST_GARAGE_IMAGE")
        .unwrap_or_else(|_| "localhost/tierkeep-garage:2.5.0".into());
    let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    // Garage's single-node mode lays out the node and imports the key (allowed to create
    // buckets) at start, and again, unchanged, when the container is started again.
    let key_id = format!("GK{}", random_hex(12));
    let secret = random_hex(32);
    let container = GenericImage::new(name, tag)
        .with_exposed_port(3900.tcp())
        .with_wait_for(WaitFor::message_on_either_std("S3 API server listening"))
        .with_mapped_port(port, 3900.tcp())
        .with_host_config_modifier(loopback_only)
        .with_env_var("RUST_LOG", "garage=info")
        .with_env_var("GARAGE_DEFAULT_ACCESS_KEY", &key_id)
        .with_env_var("GARAGE_DEFAULT_SECRET_KEY", &secret)
        .with_cmd(["server", "--single-node", "--default-access-key"])
        .start()
        .unwrap_or_else(|e| {
            panic!(
                "a Docker API answers at {}, but neither MinIO ({minio_error}) nor the Garage \
                 image {image} ({e}) would start; build the image with .ci/garage-image, or \
                 unset DOCKER_HOST for the other fixtures",
                socket.display()
            )
        });
    wait_for_port(port, "Garage");
    announce!(
        "S3 fixture: Garage in container {} (testcontainers, {}, image {image}; MinIO: \
         {minio_error}) on 127.0.0.1:{port}",
        container.id(),
        socket.display()
    );
    in_container(
        Kind::GarageContainer,
        socket,
        container,
        port,
        "garage",
        (key_id, secret),
    )
}

/// The fixture of a started container whose S3 port is mapped to `port` on loopback,
/// with the watcher that removes it once this test process is gone.
fn in_container(
    kind: Kind,
    socket: &Path,
    container: testcontainers::Container<testcontainers::GenericImage>,
    port: u16,
    region: &str,
    (access_key, secret_key): (String, String),
) -> S3 {
    let reaper = reaper(socket, container.id());
    S3 {
        kind,
        endpoint: format!("http://127.0.0.1:{port}"),
        region: region.into(),
        access_key,
        secret_key,
        inner: Mutex::new(Inner::Container {
            container: Box::new(container),
            _reaper: reaper,
        }),
    }
}

fn garage(bin: &Path, config: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("run garage");
    assert!(
        out.status.success(),
        "garage {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `garage server` under a small shell watchdog that kills it when this test
/// process goes away (statics are never dropped, so `Drop` cannot be relied on).
fn spawn_garage(bin: &Path, config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("garage log");
    let pidfile = config.with_extension("pid");
    Command::new("sh")
        .arg("-c")
        .arg(
            "\"$0\" -c \"$1\" server & g=$!; echo $g > \"$2\"; \
             while kill -0 \"$3\" 2>/dev/null && kill -0 $g 2>/dev/null; do sleep 1; done; \
             kill $g 2>/dev/null; wait $g",
        )
        .arg(bin)
        .arg(config)
        .arg(&pidfile)
        .arg(std::process::id().to_string())
        .env("RUST_LOG", "garage=warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start garage")
}

/// Kills the Garage server for real (SIGKILL) and waits for its watchdog.
fn kill_garage(child: &mut Child, config: &Path) {
    let pidfile = config.with_extension("pid");
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
    let _ = child.wait();
}

pub fn start_garage(bin: PathBuf) -> S3 {
    let dir = tempfile::Builder::new()
        .prefix("tierkeep-garage-")
        .tempdir()
        .expect("tempdir");
    let (rpc, s3, admin) = (free_port(), free_port(), free_port());
    let config = dir.path().join("garage.toml");
    std::fs::write(
        &config,
        format!(
            "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
             [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
             root_domain = \".s3.garage.localhost\"\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
            d = dir.path().display(),
            secret = random_hex(32),
        ),
    )
    .expect("garage config");
    let child = spawn_garage(&bin, &config, &dir.path().join("garage.log"));
    wait_for_port(s3, "Garage");
    // The node id is on the line that says NO ROLE ASSIGNED.
    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let out = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("status")
            .output()
            .expect("garage status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains("NO ROLE ASSIGNED")) {
            break line.split_whitespace().next().expect("node id").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "garage status never listed the node:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    garage(
        &bin,
        &config,
        &["layout", "assign", "-z", "dc1", "-c", "10G", &node],
    );
    garage(&bin, &config, &["layout", "apply", "--version", "1"]);
    let key_id = format!("GK{}", random_hex(12));
    let secret = random_hex(32);
    garage(
        &bin,
        &config,
        &["key", "import", "--yes", &key_id, &secret, "-n", "tierkeep"],
    );
    garage(
        &bin,
        &config,
        &["key", "allow", "--create-bucket", "tierkeep"],
    );
    announce!(
        "S3 fixture: Garage ({}) on 127.0.0.1:{s3}, data in {}",
        bin.display(),
        dir.path().display()
    );
    S3 {
        kind: Kind::Garage,
        endpoint: format!("http://127.0.0.1:{s3}"),
        region: "garage".into(),
        access_key: key_id,
        secret_key: secret,
        inner: Mutex::new(Inner::Garage {
            child: Some(child),
            bin,
            config,
            _dir: dir,
        }),
    }
}

/// moto's standalone server (`TIERKEEP_TEST_MOTO`, or `moto_server` on `PATH`).
pub fn find_moto() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TIERKEEP_TEST_MOTO") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

/// A moto server for this test binary, started on first use; `None` (the caller says
/// "not applicable") when no moto server is installed.
pub fn moto() -> Option<&'static S3> {
    static MOTO: OnceLock<Option<S3>> = OnceLock::new();
    MOTO.get_or_init(|| find_moto().map(start_moto)).as_ref()
}

fn start_moto(bin: PathBuf) -> S3 {
    let dir = tempfile::Builder::new()
        .prefix("tierkeep-moto-")
        .tempdir()
        .expect("tempdir");
    let port = free_port();
    let pidfile = dir.path().join("moto.pid");
    let log = std::fs::File::create(dir.path().join("moto.log")).expect("moto log");
    // The same watchdog as Garage's: the server goes when this test process does.
    let child = Command::new("sh")
        .arg("-c")
        .arg(
            "\"$0\" -H 127.0.0.1 -p \"$1\" & g=$!; echo $g > \"$2\"; \
             while kill -0 \"$3\" 2>/dev/null && kill -0 $g 2>/dev/null; do sleep 1; done; \
             kill $g 2>/dev/null; wait $g",
        )
        .arg(&bin)
        .arg(port.to_string())
        .arg(&pidfile)
        .arg(std::process::id().to_string())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start moto_server");
    wait_for_port(port, "moto_server");
    announce!(
        "S3 fixture: moto server ({}, an emulator) on 127.0.0.1:{port}",
        bin.display()
    );
    S3 {
        kind: Kind::Moto,
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        access_key: "tierkeep-moto".into(),
        secret_key: random_hex(16),
        inner: Mutex::new(Inner::Moto {
            child,
            pidfile,
            _dir: dir,
        }),
    }
}

const IN_PROCESS_KEY: &str = "tierkeep-test";

async fn serve_s3s(listener: tokio::net::TcpListener, root: PathBuf, secret: String) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs root");
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(IN_PROCESS_KEY, secret));
    let service = builder.build();
    // Connections live in this task's set: aborting the server task (stop()) drops the
    // set, which closes every open connection too, as a killed server would.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let service = service.clone();
        connections.spawn(async move {
            let _ = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub fn start_in_process() -> S3 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let root = tempfile::Builder::new()
        .prefix("tierkeep-s3s-")
        .tempdir()
        .expect("tempdir");
    let secret = random_hex(16);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = runtime.spawn(serve_s3s(
        listener,
        root.path().to_path_buf(),
        secret.clone(),
    ));
    announce!("S3 fixture: in-process s3s-fs server on 127.0.0.1:{port}");
    S3 {
        kind: Kind::InProcess,
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        access_key: IN_PROCESS_KEY.into(),
        secret_key: secret,
        inner: Mutex::new(Inner::InProcess {
            runtime,
            task: Some(task),
            port,
            root,
        }),
    }
}

impl S3 {
    /// The port of the endpoint (on 127.0.0.1).
    fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the endpoint ends with a port")
    }

    /// An S3 client for the fixture's own bookkeeping (creating buckets, inspecting).
    pub fn client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .endpoint_url(&self.endpoint)
            .region(Region::new(self.region.clone()))
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Creates a bucket with a unique name starting with `prefix`; returns its name.
    pub fn bucket(&self, prefix: &str) -> String {
        self.create_bucket(prefix, false)
    }

    /// Creates a bucket with S3 Object Lock enabled (and so versioning); returns its name.
    pub fn locked_bucket(&self, prefix: &str) -> String {
        self.create_bucket(prefix, true)
    }

    fn create_bucket(&self, prefix: &str, lock: bool) -> String {
        let name = format!("{prefix}-{}", random_hex(6));
        let client = self.client();
        self.block_on(async {
            client
                .create_bucket()
                .bucket(&name)
                .set_object_lock_enabled_for_bucket(lock.then_some(true))
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "create bucket {name}{}: {}",
                        if lock { " with Object Lock" } else { "" },
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    )
                })
        });
        name
    }

    /// Every object version in a bucket: (key, version id, is a delete marker), sorted.
    pub fn versions(&self, bucket: &str) -> Vec<(String, String, bool)> {
        let client = self.client();
        self.block_on(async {
            let out = client
                .list_object_versions()
                .bucket(bucket)
                .send()
                .await
                .expect("list object versions");
            let mut v: Vec<(String, String, bool)> = out
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id(), false))
                .chain(
                    out.delete_markers()
                        .iter()
                        .map(|m| (m.key(), m.version_id(), true)),
                )
                .map(|(k, id, marker)| {
                    (
                        k.unwrap_or_default().to_owned(),
                        id.unwrap_or_default().to_owned(),
                        marker,
                    )
                })
                .collect();
            v.sort();
            v
        })
    }

    /// The Object Lock retention end of a version, as the server reports it (RFC 3339).
    pub fn retain_until(&self, bucket: &str, key: &str, version: &str) -> Option<String> {
        let client = self.client();
        self.block_on(async {
            let head = client
                .head_object()
                .bucket(bucket)
                .key(key)
                .version_id(version)
                .send()
                .await
                .expect("head object");
            head.object_lock_retain_until_date().map(|d| {
                d.fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
                    .expect("date")
            })
        })
    }

    /// A raw DeleteObject of one version, as any client holding the keys could send it.
    pub fn delete_version(&self, bucket: &str, key: &str, version: &str) -> Result<(), String> {
        let client = self.client();
        self.block_on(async {
            client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .version_id(version)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
        })
    }

    /// A raw PutObject; returns the new version's id.
    pub fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> String {
        let client = self.client();
        self.block_on(async {
            client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send()
                .await
                .expect("put object")
                .version_id()
                .unwrap_or_default()
                .to_owned()
        })
    }

    /// The bytes of an object (its current version).
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.get_object(bucket, key, None)
    }

    /// The bytes of one version of an object.
    pub fn get_version(&self, bucket: &str, key: &str, version: &str) -> Vec<u8> {
        self.get_object(bucket, key, Some(version))
    }

    fn get_object(&self, bucket: &str, key: &str, version: Option<&str>) -> Vec<u8> {
        let client = self.client();
        self.block_on(async {
            let out = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .set_version_id(version.map(str::to_owned))
                .send()
                .await
                .expect("get object");
            out.body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec()
        })
    }

    /// Object keys in a bucket.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let client = self.client();
        self.block_on(async {
            let out = client
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .expect("list objects");
            let mut keys: Vec<String> = out
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect();
            keys.sort();
            keys
        })
    }

    /// Whether the server answers ListMultipartUploads (s3s-fs does not).
    pub fn lists_uploads(&self) -> bool {
        !matches!(self.kind, Kind::InProcess)
    }

    /// Incomplete multipart uploads in a bucket.
    pub fn uploads(&self, bucket: &str) -> usize {
        let client = self.client();
        self.block_on(async {
            client
                .list_multipart_uploads()
                .bucket(bucket)
                .send()
                .await
                .map(|o| o.uploads().len())
                .unwrap_or(0)
        })
    }

    /// Environment for a `tierkeep` process using this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    /// The `[s3]` section of a tierkeep config for this server.
    pub fn config_section(&self) -> String {
        format!(
            "[s3]\nendpoint = \"{}\"\nregion = \"{}\"\nforce_path_style = true\n",
            self.endpoint, self.region
        )
    }

    /// Whether this fixture can stop and restart its server.
    pub fn can_stop(&self) -> bool {
        matches!(
            self.kind,
            Kind::Garage | Kind::InProcess | Kind::MinioContainer | Kind::GarageContainer
        )
    }

    /// Stops the server (Garage: kill its process; in-process: stop serving and close
    /// the port). Data stays on disk.
    pub fn stop(&self) {
        let mut inner = self.inner.lock().expect("lock");
        match &mut *inner {
            Inner::Garage { child, config, .. } => {
                if let Some(mut c) = child.take() {
                    kill_garage(&mut c, config);
                }
            }
            Inner::InProcess { task, runtime, .. } => {
                if let Some(t) = task.take() {
                    t.abort();
                    let _ = runtime.block_on(t);
                }
            }
            // Killed at once (no grace), as a crashed server would be; data stays.
            Inner::Container { container, .. } => {
                container
                    .stop_with_timeout(Some(0))
                    .expect("stop the container");
            }
            _ => panic!("this S3 fixture cannot be stopped"),
        }
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&self) {
        let mut inner = self.inner.lock().expect("lock");
        match &mut *inner {
            Inner::Garage {
                child,
                bin,
                config,
                _dir,
            } => {
                *child = Some(spawn_garage(bin, config, &_dir.path().join("garage-2.log")));
                wait_for_port(self.port(), "Garage");
            }
            Inner::InProcess {
                runtime,
                task,
                port,
                root,
            } => {
                let listener = runtime
                    .block_on(tokio::net::TcpListener::bind(("127.0.0.1", *port)))
                    .expect("rebind the S3 port");
                *task = Some(runtime.spawn(serve_s3s(
                    listener,
                    root.path().to_path_buf(),
                    self.secret_key.clone(),
                )));
            }
            Inner::Container { container, .. } => {
                container.start().expect("start the container again");
                wait_for_port(self.port(), "the S3 container");
            }
            _ => panic!("this S3 fixture cannot be restarted"),
        }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.inner.lock() {
            match &mut *inner {
                Inner::Garage { child, config, .. } => {
                    if let Some(mut c) = child.take() {
                        kill_garage(&mut c, config);
                    }
                }
                Inner::Moto { child, pidfile, .. } => {
                    if let Ok(pid) = std::fs::read_to_string(pidfile) {
                        let _ = Command::new("kill").arg(pid.trim()).status();
                    }
                    let _ = child.wait();
                }
                _ => {}
            }
        }
    }
}
