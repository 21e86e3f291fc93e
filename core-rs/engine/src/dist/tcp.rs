//! The `tcp` backend: a star over plain sockets. Rank 0 listens; every other rank connects once.
//! An all-reduce sends each rank's values to rank 0, which adds them in rank order (so the sum is
//! the same bits whatever the arrival order) and sends the sum back to everyone.
//!
//! Wire format, little-endian: hello = magic `b"BMDP"`, version u32, rank u32, world u32; rank 0
//! answers one byte (1 = accepted). Each operation = tag u8, element count u64, payload.
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{flatten_host, publish, unflatten, wait_for, Collective, DistConfig};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"BMDP";
const VERSION: u32 = 1;
const TAG_REDUCE_F64: u8 = 1;
const TAG_REDUCE_F32: u8 = 2;
const TAG_BCAST_F32: u8 = 3;
const PREFIX: &str = "bunmind-tcp-v1 ";

pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: one stream per rank (index 0 unused). Other ranks: the stream to rank 0 at index 0.
    peers: Vec<Option<TcpStream>>,
    timeout: Duration,
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    let why = match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => "timed out (a rank stopped or is far behind)".to_string(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => "the other side closed the connection (a rank exited)".to_string(),
        _ => e.to_string(),
    };
    Error::Other(format!("data-parallel (tcp): {what}: {why}"))
}

impl TcpCollective {
    pub fn connect(cfg: &DistConfig) -> Result<TcpCollective> {
        cfg.check()?;
        let timeout = cfg.timeout();
        let mut peers: Vec<Option<TcpStream>> = (0..cfg.world_size).map(|_| None).collect();
        if cfg.world_size == 1 {
            return Ok(TcpCollective { rank: 0, world: 1, peers, timeout });
        }
        if cfg.rank == 0 {
            let host = crate::env::dist_host();
            let listener = TcpListener::bind((host.as_str(), 0)).map_err(|e| io_err(format!("rank 0 cannot listen on {host}"), e))?;
            let addr = listener.local_addr().map_err(|e| io_err("listener address", e))?;
            publish(&cfg.rendezvous, format!("{PREFIX}{addr}\n").as_bytes())?;
            listener.set_nonblocking(true).map_err(|e| io_err("listener", e))?;
            let start = Instant::now();
            let mut joined = 1;
            while joined < cfg.world_size {
                match listener.accept() {
                    Ok((mut s, from)) => {
                        s.set_nonblocking(false).map_err(|e| io_err("accept", e))?;
                        setup(&s, timeout)?;
                        let mut hello = [0u8; 16];
                        s.read_exact(&mut hello).map_err(|e| io_err(format!("hello from {from}"), e))?;
                        let field = |i: usize| u32::from_le_bytes(hello[i..i + 4].try_into().unwrap()) as usize;
                        if &hello[..4] != MAGIC || field(4) != VERSION as usize {
                            // Not one of ours (or another version): ignore it.
                            continue;
                        }
                        let (r, w) = (field(8), field(12));
                        if w != cfg.world_size {
                            return Err(Error::Other(format!("data-parallel (tcp): rank {r} was started with world size {w}, rank 0 with {}", cfg.world_size)));
                        }
                        if r == 0 || r >= w || peers[r].is_some() {
                            return Err(Error::Other(format!("data-parallel (tcp): a second process joined as rank {r} (each rank must be started once)")));
                        }
                        s.write_all(&[1]).map_err(|e| io_err(format!("accepting rank {r}"), e))?;
                        peers[r] = Some(s);
                        joined += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if start.elapsed() > timeout {
                            let missing: Vec<String> = (1..cfg.world_size).filter(|&r| peers[r].is_none()).map(|r| r.to_string()).collect();
                            return Err(Error::Other(format!(
                                "data-parallel (tcp): rank(s) {} did not join within {:.0} s",
                                missing.join(", "),
                                timeout.as_secs_f64()
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(io_err("accept", e)),
                }
            }
        } else {
            let start = Instant::now();
            let stream = loop {
                let addr = wait_for(&cfg.rendezvous, timeout.saturating_sub(start.elapsed()), |b| {
                    std::str::from_utf8(b).ok()?.strip_prefix(PREFIX).map(|a| a.trim().to_string())
                })?;
                // The file may be a stale one from an earlier job: retry until rank 0 answers.
                match TcpStream::connect(&addr) {
                    Ok(mut s) => {
                        setup(&s, timeout)?;
                        let mut hello = Vec::with_capacity(16);
                        hello.extend_from_slice(MAGIC);
                        for v in [VERSION, cfg.rank as u32, cfg.world_size as u32] {
                            hello.extend_from_slice(&v.to_le_bytes());
                        }
                        let mut ok = [0u8; 1];
                        if s.write_all(&hello).is_ok() && s.read_exact(&mut ok).is_ok() && ok[0] == 1 {
                            break s;
                        }
                    }
                    Err(_) if start.elapsed() < timeout => {}
                    Err(e) => return Err(io_err(format!("rank {} cannot reach rank 0 at {addr}", cfg.rank), e)),
                }
                if start.elapsed() > timeout {
                    return Err(Error::Other(format!("data-parallel (tcp): rank {} could not join rank 0 within {:.0} s", cfg.rank, timeout.as_secs_f64())));
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            peers[0] = Some(stream);
        }
        Ok(TcpCollective { rank: cfg.rank, world: cfg.world_size, peers, timeout })
    }

    fn peer(&mut self, r: usize) -> &mut TcpStream {
        self.peers[r].as_mut().expect("connected at join")
    }

    fn send(&mut self, to: usize, tag: u8, payload: &[u8], count: usize) -> Result<()> {
        let me = self.rank;
        let s = self.peer(to);
        let mut head = [0u8; 9];
        head[0] = tag;
        head[1..].copy_from_slice(&(count as u64).to_le_bytes());
        s.write_all(&head).and_then(|_| s.write_all(payload)).map_err(|e| io_err(format!("rank {me} → rank {to}"), e))
    }

    fn recv(&mut self, from: usize, tag: u8, count: usize, elem: usize) -> Result<Vec<u8>> {
        let me = self.rank;
        let timeout = self.timeout;
        let s = self.peer(from);
        let mut head = [0u8; 9];
        s.read_exact(&mut head).map_err(|e| io_err(format!("rank {me} waiting for rank {from} (limit {:.0} s)", timeout.as_secs_f64()), e))?;
        let n = u64::from_le_bytes(head[1..].try_into().unwrap()) as usize;
        if head[0] != tag || n != count {
            return Err(Error::Other(format!(
                "data-parallel (tcp): rank {from} sent operation {} with {n} values where rank {me} expected operation {tag} with {count}: the ranks disagree on the model or the step",
                head[0]
            )));
        }
        let mut buf = vec![0u8; n * elem];
        s.read_exact(&mut buf).map_err(|e| io_err(format!("rank {me} reading from rank {from}"), e))?;
        Ok(buf)
    }

    /// Sum over ranks of little-endian values of `elem` bytes; `add(acc, bytes)` adds one rank's.
    fn reduce_bytes(&mut self, tag: u8, mine: Vec<u8>, count: usize, elem: usize, add: impl Fn(&mut [u8], &[u8])) -> Result<Vec<u8>> {
        if self.world == 1 {
            return Ok(mine);
        }
        if self.rank == 0 {
            let mut acc = mine;
            for r in 1..self.world {
                let theirs = self.recv(r, tag, count, elem)?;
                add(&mut acc, &theirs);
            }
            for r in 1..self.world {
                self.send(r, tag, &acc, count)?;
            }
            Ok(acc)
        } else {
            self.send(0, tag, &mine, count)?;
            self.recv(0, tag, count, elem)
        }
    }
}

fn setup(s: &TcpStream, timeout: Duration) -> Result<()> {
    s.set_nodelay(true).map_err(|e| io_err("socket", e))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| io_err("socket", e))?;
    s.set_write_timeout(Some(timeout)).map_err(|e| io_err("socket", e))?;
    Ok(())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce_host(&mut self, values: &mut [f64]) -> Result<()> {
        let mine: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let sum = self.reduce_bytes(TAG_REDUCE_F64, mine, values.len(), 8, |acc, b| {
            for (a, c) in acc.chunks_exact_mut(8).zip(b.chunks_exact(8)) {
                let v = f64::from_le_bytes(a.try_into().unwrap()) + f64::from_le_bytes(c.try_into().unwrap());
                a.copy_from_slice(&v.to_le_bytes());
            }
        })?;
        for (v, c) in values.iter_mut().zip(sum.chunks_exact(8)) {
            *v = f64::from_le_bytes(c.try_into().unwrap());
        }
        Ok(())
    }

    fn all_reduce_tensors(&mut self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        if self.world == 1 {
            return Ok(tensors.to_vec());
        }
        let flat = flatten_host(tensors)?;
        let n = flat.len();
        let sum = self.reduce_bytes(TAG_REDUCE_F32, f32_bytes(&flat), n, 4, |acc, b| {
            for (a, c) in acc.chunks_exact_mut(4).zip(b.chunks_exact(4)) {
                let v = f32::from_le_bytes(a.try_into().unwrap()) + f32::from_le_bytes(c.try_into().unwrap());
                a.copy_from_slice(&v.to_le_bytes());
            }
        })?;
        unflatten(&bytes_f32(&sum), tensors)
    }

    fn broadcast_tensors(&mut self, tensors: &[Tensor], root: usize) -> Result<Vec<Tensor>> {
        if root >= self.world {
            return Err(Error::input(format!("broadcast: root {root} is outside a world of {}", self.world)));
        }
        if self.world == 1 {
            return Ok(tensors.to_vec());
        }
        let flat = flatten_host(tensors)?;
        let n = flat.len();
        // Through rank 0: the root sends to rank 0 (unless it is rank 0), rank 0 sends to all.
        let data = if self.rank == 0 {
            let data = if root == 0 { f32_bytes(&flat) } else { self.recv(root, TAG_BCAST_F32, n, 4)? };
            for r in 1..self.world {
                if r != root {
                    self.send(r, TAG_BCAST_F32, &data, n)?;
                }
            }
            data
        } else if self.rank == root {
            let data = f32_bytes(&flat);
            self.send(0, TAG_BCAST_F32, &data, n)?;
            data
        } else {
            self.recv(0, TAG_BCAST_F32, n, 4)?
        };
        if self.rank == root {
            return Ok(tensors.to_vec());
        }
        unflatten(&bytes_f32(&data), tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cfg(dir: &std::path::Path, rank: usize, world: usize, timeout_s: f64) -> DistConfig {
        DistConfig { backend: "tcp".into(), rank, world_size: world, rendezvous: dir.join("rdv"), timeout_s }
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bunmind-tcp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn all_reduce_and_broadcast_over_three_ranks() {
        let dir = tmpdir("ops");
        let world = 3;
        let handles: Vec<_> = (0..world)
            .map(|r| {
                let c = cfg(&dir, r, world, 20.0);
                std::thread::spawn(move || {
                    let mut col = TcpCollective::connect(&c).unwrap();
                    let mut host = vec![r as f64, 1.0, 0.5 * r as f64];
                    col.all_reduce_host(&mut host).unwrap();
                    let a = Tensor::new(&[[r as f32, 1.0], [2.0, -(r as f32)]], &Device::Cpu).unwrap();
                    let b = Tensor::new(&[10.0f32 * r as f32], &Device::Cpu).unwrap();
                    let sums = col.all_reduce_tensors(&[a.clone(), b]).unwrap();
                    let bc = col.broadcast_tensors(&[a], 2).unwrap();
                    (host, sums[0].to_vec2::<f32>().unwrap(), sums[1].to_vec1::<f32>().unwrap(), bc[0].to_vec2::<f32>().unwrap())
                })
            })
            .collect();
        for h in handles {
            let (host, a, b, bc) = h.join().unwrap();
            assert_eq!(host, vec![3.0, 3.0, 1.5]);
            assert_eq!(a, vec![vec![3.0, 3.0], vec![6.0, -3.0]]);
            assert_eq!(b, vec![30.0]);
            assert_eq!(bc, vec![vec![2.0, 1.0], vec![2.0, -2.0]]);
        }
    }

    #[test]
    fn mismatched_sizes_are_an_error_naming_the_rank() {
        let dir = tmpdir("mismatch");
        let handles: Vec<_> = (0..2)
            .map(|r| {
                let c = cfg(&dir, r, 2, 10.0);
                std::thread::spawn(move || {
                    let mut col = TcpCollective::connect(&c).unwrap();
                    let t = Tensor::zeros(2 + r, candle_core::DType::F32, &Device::Cpu).unwrap();
                    col.all_reduce_tensors(&[t]).map(|_| ()).map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let root = results[0].as_ref().unwrap_err();
        assert!(root.contains("rank 1 sent") && root.contains("3 values") && root.contains("expected"), "{root}");
        // Rank 1 sees rank 0 go away.
        assert!(results[1].is_err());
    }

    #[test]
    fn a_missing_rank_times_out_with_a_clear_error() {
        let dir = tmpdir("missing");
        let err = TcpCollective::connect(&cfg(&dir, 0, 2, 0.3)).err().expect("nobody joins").to_string();
        assert!(err.contains("rank(s) 1 did not join"), "{err}");
        let err = TcpCollective::connect(&cfg(&tmpdir("norank0"), 1, 2, 0.3)).err().expect("no rank 0").to_string();
        assert!(err.contains("rank 0 did not publish"), "{err}");
    }
}
