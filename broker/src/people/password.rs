//! Passwords: the rule a new password must keep, Argon2id hashing off the
//! async runtime behind a bounded queue, and temporary passwords.
//!
//! The rule follows seed 002 ch. 2 §6(4)②: long enough (at least 12
//! characters), hard to guess (not the user id, not one repeated
//! character), old passwords not reused (none of the last 5), a temporary
//! password changed at first login.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use kakehashi_interfaces::people::{UserId, MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
use rand::distributions::{Distribution, Uniform};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Argon2id memory cost in KiB (OWASP: 19 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// Argon2id passes (OWASP: 2).
pub const ARGON2_ITERATIONS: u32 = 2;
/// Argon2id lanes (OWASP: 1).
pub const ARGON2_LANES: u32 = 1;
/// How many of the most recent passwords a new one may not repeat.
pub const HISTORY_DEPTH: usize = 5;
/// Random characters in a temporary password (about 115 bits).
pub const TEMPORARY_PASSWORD_CHARS: usize = 20;

/// Characters that cannot be mistaken for one another when read aloud or
/// copied from a terminal: no 0/O/o, 1/I/l/i.
const TEMPORARY_ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz";

/// Which part of the password rule a new password breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters.
    #[error("12文字以上にしてください / must be at least 12 characters")]
    TooShort,
    /// More than [`MAX_PASSWORD_CHARS`] characters.
    #[error("128文字以内にしてください / must be at most 128 characters")]
    TooLong,
    /// The same as the user id.
    #[error("利用者IDと同じにはできません / must not be the user id")]
    SameAsUserId,
    /// One character repeated.
    #[error("同じ文字の繰り返しにはできません / must not be one character repeated")]
    OneRepeatedCharacter,
    /// A control character (cannot be typed reliably).
    #[error("制御文字は使えません / must not contain control characters")]
    ControlCharacter,
}

/// Checks a new password against the rule (everything except reuse, which
/// needs the stored hashes: see [`Hasher::replace`]).
pub fn check_rule(user_id: &UserId, password: &str) -> Result<(), WeakPassword> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(WeakPassword::TooShort);
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(WeakPassword::TooLong);
    }
    if password.chars().any(char::is_control) {
        return Err(WeakPassword::ControlCharacter);
    }
    if password.to_lowercase() == user_id.as_str() {
        return Err(WeakPassword::SameAsUserId);
    }
    let mut it = password.chars();
    if let Some(first) = it.next() {
        if it.all(|c| c == first) {
            return Err(WeakPassword::OneRepeatedCharacter);
        }
    }
    Ok(())
}

/// A temporary password, issued when a user is added or reset. Wiped from
/// memory on drop; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct TemporaryPassword(Zeroizing<String>);

impl TemporaryPassword {
    /// A fresh random one: 20 characters of an unambiguous alphabet, in
    /// groups of five joined by `-` for reading.
    pub fn generate() -> Self {
        let pick = Uniform::new(0, TEMPORARY_ALPHABET.len());
        let mut rng = rand::rngs::OsRng;
        let mut out = Zeroizing::new(String::with_capacity(TEMPORARY_PASSWORD_CHARS + 3));
        for i in 0..TEMPORARY_PASSWORD_CHARS {
            if i > 0 && i % 5 == 0 {
                out.push('-');
            }
            out.push(char::from(TEMPORARY_ALPHABET[pick.sample(&mut rng)]));
        }
        TemporaryPassword(out)
    }

    /// The password text, to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TemporaryPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TemporaryPassword(****)")
    }
}

/// Why the hasher did not run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HasherError {
    /// All workers busy and the queue full: refused at once.
    #[error("password hashing queue full")]
    Busy,
    /// The job did not finish (the runtime is shutting down, or it panicked).
    #[error("password hashing job did not finish")]
    Stopped,
}

/// A stored hash could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored password hash is malformed")]
pub struct MalformedHash;

/// What replacing a password found.
#[derive(Clone, PartialEq, Eq)]
pub enum Replacement {
    /// The current password was wrong.
    WrongCurrent,
    /// The new password matches one of the recent ones.
    Reused,
    /// The new password's hash (PHC string).
    Hashed(String),
}

impl std::fmt::Debug for Replacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replacement::WrongCurrent => f.write_str("WrongCurrent"),
            Replacement::Reused => f.write_str("Reused"),
            // The hash stays out of logs and test output.
            Replacement::Hashed(_) => f.write_str("Hashed(…)"),
        }
    }
}

/// Runs Argon2id off the async runtime, on `workers` threads of its own at
/// the lowest scheduling priority (`SCHED_IDLE`, else nice 19): at most
/// `workers` jobs at once and at most `queue` waiting; beyond that a job is
/// refused at once ([`HasherError::Busy`]). A login flood so costs at most
/// `workers` threads, never blocks the exchange's tasks, and gets the CPU
/// when no other thread on the host wants it (benches/README.md, "People:
/// approvals and a login flood").
#[derive(Clone)]
pub struct Hasher {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    jobs: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

/// One hashing thread: lowers its own priority, then runs jobs until every
/// [`Hasher`] clone is gone.
fn hash_worker(jobs: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Job>>>) {
    lower_own_priority();
    loop {
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Puts the calling thread under `SCHED_IDLE` where the OS has it, else at
/// nice 19. Under `SCHED_IDLE` a waking exchange thread preempts a hash at
/// once; at nice 19 the scheduler may first let the hash finish its slice
/// (up to a few milliseconds), which is what a login flood added to the
/// exchange's latency (benches/README.md, "People: approvals and a login
/// flood"). Failure (a container that forbids both) leaves the thread at
/// normal priority: slower for the exchange under a flood, nothing else.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle).is_ok() {
            return;
        }
    }
    let _ = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min);
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("free_workers", &self.running.available_permits())
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// A hasher with `workers` concurrent jobs (at least 1) and `queue` waiting.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        let (jobs, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for n in 0..workers {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kakehashi-hash-{n}"))
                .spawn(move || hash_worker(receiver));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        // The dummy hash for unknown user ids is made here, off the request
        // path: made at the first unknown id, that answer would take a hash
        // longer than a known id's and tell the two apart.
        let _ = jobs.send(Box::new(|| {
            dummy_hash();
        }));
        Hasher {
            running: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(Semaphore::new(workers.saturating_add(queue))),
            jobs,
        }
    }

    /// Runs `job` on a hashing thread once a worker is free.
    pub async fn run<T, F>(&self, job: F) -> Result<T, HasherError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| HasherError::Busy)?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HasherError::Stopped)?;
        let (done, wait) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The permits live as long as the job, even if the caller gives up waiting.
            let _permits = (admitted, running);
            let _ = done.send(job());
        });
        self.jobs.send(job).map_err(|_| HasherError::Stopped)?;
        wait.await.map_err(|_| HasherError::Stopped)
    }

    /// Hashes a new password (PHC string, Argon2id with OWASP parameters).
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, HasherError> {
        self.run(move || hash_now(&password))
            .await?
            .map_err(|_| HasherError::Stopped)
    }

    /// Whether `password` matches `phc`. With `phc` absent (unknown user) a
    /// dummy hash is checked, so the answer takes as long either way.
    pub async fn verify(
        &self,
        phc: Option<String>,
        password: Zeroizing<String>,
    ) -> Result<Result<bool, MalformedHash>, HasherError> {
        self.run(move || match phc {
            Some(phc) => verify_now(&phc, &password),
            None => {
                let _ = verify_now(dummy_hash(), &password);
                Ok(false)
            }
        })
        .await
    }

    /// Checks `current` against `current_phc` and `new` against the recent
    /// hashes, then hashes `new`: one job, so a password change holds one
    /// worker however many hashes it checks.
    pub async fn replace(
        &self,
        current_phc: String,
        current: Zeroizing<String>,
        recent: Vec<String>,
        new: Zeroizing<String>,
    ) -> Result<Result<Replacement, MalformedHash>, HasherError> {
        self.run(move || {
            if !verify_now(&current_phc, &current)? {
                return Ok(Replacement::WrongCurrent);
            }
            for old in recent.iter().take(HISTORY_DEPTH) {
                if verify_now(old, &new)? {
                    return Ok(Replacement::Reused);
                }
            }
            hash_now(&new).map(Replacement::Hashed)
        })
        .await
    }
}

fn argon2() -> Result<Argon2<'static>, MalformedHash> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None)
        .map_err(|_| MalformedHash)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes on the calling thread (blocking: tens of milliseconds, 19 MiB).
fn hash_now(password: &str) -> Result<String, MalformedHash> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| MalformedHash)
}

/// Verifies on the calling thread; the parameters come from the PHC string.
fn verify_now(phc: &str, password: &str) -> Result<bool, MalformedHash> {
    let parsed = PasswordHash::new(phc).map_err(|_| MalformedHash)?;
    match argon2()?.verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(_) => Err(MalformedHash),
    }
}

/// A hash of a random password, made once, for unknown user ids.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_now(TemporaryPassword::generate().expose()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn length_bounds() {
        let u = user("taro");
        assert_eq!(check_rule(&u, "abcdefghijk"), Err(WeakPassword::TooShort));
        assert_eq!(check_rule(&u, "abcdefghijkl"), Ok(()));
        // Characters, not bytes: 12 kana are long enough, 11 are not.
        assert_eq!(check_rule(&u, "あいうえおかきくけこさし"), Ok(()));
        assert_eq!(
            check_rule(&u, "あいうえおかきくけこさ"),
            Err(WeakPassword::TooShort)
        );
        assert_eq!(check_rule(&u, &"ab".repeat(64)), Ok(()));
        assert_eq!(
            check_rule(&u, &format!("{}c", "ab".repeat(64))),
            Err(WeakPassword::TooLong)
        );
    }

    #[test]
    fn guessable_passwords() {
        let u = user("taro.yamada.01");
        assert_eq!(
            check_rule(&u, "taro.yamada.01"),
            Err(WeakPassword::SameAsUserId)
        );
        assert_eq!(
            check_rule(&u, "TARO.YAMADA.01"),
            Err(WeakPassword::SameAsUserId)
        );
        assert_eq!(
            check_rule(&u, "aaaaaaaaaaaaaa"),
            Err(WeakPassword::OneRepeatedCharacter)
        );
        assert_eq!(
            check_rule(&u, "correct\nhorse battery"),
            Err(WeakPassword::ControlCharacter)
        );
        assert_eq!(check_rule(&u, "taro.yamada.01!"), Ok(()));
    }

    #[test]
    fn temporary_passwords_are_random_and_unambiguous() {
        let a = TemporaryPassword::generate();
        let b = TemporaryPassword::generate();
        assert_ne!(a, b);
        let text = a.expose();
        assert_eq!(text.len(), TEMPORARY_PASSWORD_CHARS + 3);
        assert_eq!(text.split('-').count(), 4);
        assert!(text
            .chars()
            .filter(|c| *c != '-')
            .all(|c| TEMPORARY_ALPHABET.contains(&(c as u8))));
        assert!(!text.contains(['0', 'O', 'o', '1', 'I', 'l', 'i']));
        assert_eq!(check_rule(&user("taro"), text), Ok(()));
        assert_eq!(format!("{a:?}"), "TemporaryPassword(****)");
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hasher = Hasher::new(1, 4);
        let phc = hasher
            .hash(Zeroizing::new("correct horse battery".into()))
            .await
            .unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!phc.contains("horse"));
        let ok = |p: &str| {
            let hasher = hasher.clone();
            let phc = phc.clone();
            let p = Zeroizing::new(p.to_string());
            async move { hasher.verify(Some(phc), p).await.unwrap().unwrap() }
        };
        assert!(ok("correct horse battery").await);
        assert!(!ok("correct horse battery ").await);
        // An unknown user is checked against the dummy hash and never matches.
        assert!(!hasher
            .verify(None, Zeroizing::new(String::new()))
            .await
            .unwrap()
            .unwrap());
        assert_eq!(
            hasher
                .verify(Some("not a hash".into()), Zeroizing::new("x".into()))
                .await
                .unwrap(),
            Err(MalformedHash)
        );
    }

    #[tokio::test]
    async fn the_last_five_passwords_are_not_reused() {
        let hasher = Hasher::new(1, 4);
        let names: Vec<String> = (1..=6).map(|i| format!("password number {i}")).collect();
        // Newest first, as the store hands them out: 6 is the current one.
        let mut recent = Vec::new();
        for name in names.iter().rev() {
            recent.push(hasher.hash(Zeroizing::new(name.clone())).await.unwrap());
        }
        let current_phc = recent[0].clone();
        let replace = |new: &str| {
            let hasher = hasher.clone();
            let (current_phc, recent) = (current_phc.clone(), recent.clone());
            let new = Zeroizing::new(new.to_string());
            async move {
                hasher
                    .replace(
                        current_phc,
                        Zeroizing::new("password number 6".into()),
                        recent,
                        new,
                    )
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        for i in 2..=6 {
            assert_eq!(
                replace(&format!("password number {i}")).await,
                Replacement::Reused,
                "password {i} is one of the last five"
            );
        }
        // The sixth most recent is out of the window.
        assert!(matches!(
            replace("password number 1").await,
            Replacement::Hashed(_)
        ));
        assert!(matches!(
            replace("a fresh password").await,
            Replacement::Hashed(_)
        ));
        let wrong = hasher
            .replace(
                current_phc.clone(),
                Zeroizing::new("password number 5".into()),
                recent.clone(),
                Zeroizing::new("a fresh password".into()),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(wrong, Replacement::WrongCurrent);
    }

    /// A hash gives way at once to any other thread that wakes.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_under_sched_idle() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let hasher = Hasher::new(1, 1);
        let policy = hasher
            .run(thread_priority::thread_schedule_policy)
            .await
            .expect("a hashing thread ran the job")
            .expect("its policy read");
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
    }

    /// A job whose caller stopped waiting before a worker was free (a
    /// login whose request timed out) is never run.
    #[tokio::test]
    async fn a_job_nobody_waits_for_is_skipped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let hasher = Hasher::new(1, 4);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let busy = {
            let hasher = hasher.clone();
            tokio::spawn(async move {
                hasher
                    .run(move || {
                        let _ = started.send(());
                        hold.recv().is_ok()
                    })
                    .await
            })
        };
        running.await.expect("the first job started");
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            hasher.run(move || flag.store(true, Ordering::SeqCst)),
        )
        .await;
        assert!(gave_up.is_err(), "the worker was busy");
        release.send(()).expect("the first job waits");
        assert!(matches!(busy.await, Ok(Ok(true))));
        // A later job runs; the abandoned one was never handed to a worker.
        hasher.run(|| ()).await.expect("a later job runs");
        assert!(!ran.load(Ordering::SeqCst), "the abandoned job ran");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let hasher = Hasher::new(1, 1);
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let hasher = hasher.clone();
            async move {
                hasher
                    .run(move || {
                        let _ = started_tx.send(());
                        let _ = release_rx.recv();
                        1
                    })
                    .await
            }
        });
        started_rx.await.unwrap();
        // The worker is busy; one job may wait.
        let second = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.run(|| 2).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The third is refused at once, without waiting for the worker.
        let third = tokio::time::timeout(Duration::from_secs(1), hasher.run(|| 3))
            .await
            .expect("a refusal does not wait");
        assert_eq!(third, Err(HasherError::Busy));
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(second.await.unwrap(), Ok(2));
        // Room again once the queue drained.
        assert_eq!(hasher.run(|| 4).await, Ok(4));
    }
}
