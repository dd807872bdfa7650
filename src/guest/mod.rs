//! A safe layer over libguestfs's C API (through `libguestfs-sys`). All of the project's
//! unsafe code lives in this module: every raw call goes through `check`, `flag`, `string`
//! or `strings`, which turn libguestfs's return conventions into `Result`s carrying its own
//! error text and free what it allocated. A handle is closed on drop and is not `Send`
//! (libguestfs handles belong to one thread); appliance and library messages go to the
//! stage's log through an event callback instead of stderr.
//!
//! Why libguestfs-sys and not the `guestfs` crate: that crate's `Error` keeps libguestfs's
//! message in private fields with no `Display`, and it has no event callbacks, so neither
//! the error text nor the appliance log could reach the user.

pub mod access;
pub mod appliance;
pub mod customize;
pub mod firstboot;
pub mod inspect;
pub mod packages;
pub mod sources;
pub mod throwaway;
pub mod vagrant;

use crate::base::log::StageLog;
use crate::vm::Accel;
use libguestfs_sys as sys;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;

/// An error from libguestfs: the call and libguestfs's own message.
#[derive(Debug)]
pub struct GuestError {
    pub call: String,
    pub message: String,
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // libguestfs's own messages usually begin with the call's name already.
        if self.message.starts_with(&format!("{}: ", self.call)) {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.call, self.message)
        }
    }
}

impl std::error::Error for GuestError {}

pub type Result<T> = std::result::Result<T, GuestError>;

/// An installed package as inspection reports it, with what the package database and the
/// package's own files say of its origin (filled for dpkg systems, see
/// [`packages::add_debian_details`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    /// `[epoch:]version[-release]`.
    pub version: String,
    pub arch: String,
    /// The source package it was built from, when it is named otherwise (dpkg's `Source:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The licences its machine-readable copyright file names, as written there (Debian's
    /// short names, such as `GPL-2+`), each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licenses: Vec<String>,
}

/// How a disk is attached to the appliance.
#[derive(Debug, Clone, Copy)]
pub struct Drive<'a> {
    pub path: &'a Path,
    pub format: &'a str,
    pub readonly: bool,
    /// Pass discards (fstrim) through to the image, so freed space becomes unallocated.
    pub discard: bool,
}

pub struct Guest {
    /// Replaced (closed and made anew) only when a launch hangs; see [`Guest::launch`].
    g: std::cell::Cell<*mut sys::guestfs_h>,
    // Boxed so the pointer given to the event callback stays valid while the handle lives.
    log: Option<Box<StageLog>>,
    accel: Accel,
    verbose: bool,
    /// What was set up before launch, to set up a new handle the same way.
    network: std::cell::Cell<bool>,
    drives: std::cell::RefCell<Vec<OwnedDrive>>,
}

/// A drive as added, kept for a second launch.
struct OwnedDrive {
    path: std::path::PathBuf,
    format: String,
    readonly: bool,
    discard: bool,
}

const LOGGED_EVENTS: u32 =
    sys::GUESTFS_EVENT_APPLIANCE | sys::GUESTFS_EVENT_LIBRARY | sys::GUESTFS_EVENT_WARNING | sys::GUESTFS_EVENT_TRACE;

unsafe extern "C" fn log_event(
    _g: *mut sys::guestfs_h,
    opaque: *mut c_void,
    _event: u64,
    _event_handle: c_int,
    _flags: c_int,
    buf: *const c_char,
    buf_len: usize,
    _array: *const u64,
    _array_len: usize,
) {
    if opaque.is_null() || buf.is_null() {
        return;
    }
    let log = &*(opaque as *const StageLog);
    let bytes = std::slice::from_raw_parts(buf as *const u8, buf_len);
    for line in String::from_utf8_lossy(bytes).lines() {
        let line = line.trim_end();
        if !line.is_empty() {
            log.line(format!("guestfs: {line}"));
        }
    }
}

fn cstring(call: &str, s: &str) -> Result<CString> {
    CString::new(s)
        .map_err(|_| GuestError { call: call.into(), message: format!("argument contains a NUL byte: {s:?}") })
}

fn cstrings(call: &str, strings: &[&str]) -> Result<Vec<CString>> {
    strings.iter().map(|s| cstring(call, s)).collect()
}

/// The NULL-terminated `char **` libguestfs takes for string lists; valid while `owned` lives.
fn null_terminated(owned: &[CString]) -> Vec<*mut c_char> {
    let mut ptrs: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
    ptrs.push(std::ptr::null_mut());
    ptrs
}

/// vCPUs of every appliance. libguestfs starts one; a second lets the appliance's kernel
/// and daemon overlap its work (measured under TCG: launch 11.7 s -> 9.8 s, a launch plus a
/// walk of /usr 21.2 s -> 19.8 s; BENCHMARKS.md).
const APPLIANCE_CPUS: c_int = 2;

fn host_cpus() -> c_int {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(c_int::MAX as usize) as c_int)
}

impl Guest {
    /// A new handle with the accelerator applied. With a log, every libguestfs call is
    /// traced into it; `verbose` adds the appliance's own boot and daemon messages.
    pub fn new(accel: Accel, log: Option<StageLog>, verbose: bool) -> Result<Guest> {
        let guest = Guest {
            g: std::cell::Cell::new(std::ptr::null_mut()),
            log: log.map(Box::new),
            accel,
            verbose,
            network: Default::default(),
            drives: Default::default(),
        };
        guest.create_handle()?;
        Ok(guest)
    }

    /// Makes the handle (closing one there is) and sets it up: errors, log, accelerator,
    /// appliance, vCPUs.
    fn create_handle(&self) -> Result<()> {
        let g = unsafe { sys::guestfs_create() };
        if g.is_null() {
            return Err(GuestError { call: "create".into(), message: "cannot create a libguestfs handle".into() });
        }
        let old = self.g.replace(g);
        if !old.is_null() {
            unsafe { sys::guestfs_close(old) };
        }
        // Errors are returned to the caller; without this libguestfs also prints them.
        unsafe { sys::guestfs_set_error_handler(g, None, std::ptr::null_mut()) };
        if let Some(log) = &self.log {
            let opaque = log.as_ref() as *const StageLog as *mut c_void;
            let rc = unsafe { sys::guestfs_set_event_callback(g, Some(log_event), LOGGED_EVENTS as u64, 0, opaque) };
            self.check("set_event_callback", rc)?;
            self.check("set_trace", unsafe { sys::guestfs_set_trace(g, 1) })?;
            self.set_verbose(self.verbose)?;
        }
        let settings = self.accel.libguestfs_settings();
        if !settings.is_empty() {
            self.set_backend_settings(settings)?;
        }
        if self.accel == Accel::Tcg {
            self.use_tcg_appliance()?;
        }
        self.check("set_smp", unsafe { sys::guestfs_set_smp(g, APPLIANCE_CPUS.min(host_cpus())) })
    }

    fn error(&self, call: &str) -> GuestError {
        let msg = unsafe { sys::guestfs_last_error(self.g.get()) };
        let message = if msg.is_null() {
            "unknown error".to_string()
        } else {
            unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
        };
        GuestError { call: call.into(), message }
    }

    /// A call returning 0 on success, -1 on error.
    fn check(&self, call: &str, rc: c_int) -> Result<()> {
        if rc == -1 {
            Err(self.error(call))
        } else {
            Ok(())
        }
    }

    /// A call returning 1/0 for true/false, -1 on error.
    fn flag(&self, call: &str, rc: c_int) -> Result<bool> {
        self.check(call, rc).map(|_| rc == 1)
    }

    /// A call returning a string the caller frees, NULL on error.
    fn string(&self, call: &str, ptr: *mut c_char) -> Result<String> {
        if ptr.is_null() {
            return Err(self.error(call));
        }
        let s = unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned();
        unsafe { libc::free(ptr as *mut c_void) };
        Ok(s)
    }

    /// A call returning a NULL-terminated array of strings the caller frees, NULL on error.
    fn strings(&self, call: &str, ptr: *mut *mut c_char) -> Result<Vec<String>> {
        if ptr.is_null() {
            return Err(self.error(call));
        }
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let item = unsafe { *ptr.add(i) };
            if item.is_null() {
                break;
            }
            out.push(unsafe { CStr::from_ptr(item) }.to_string_lossy().into_owned());
            unsafe { libc::free(item as *mut c_void) };
            i += 1;
        }
        unsafe { libc::free(ptr as *mut c_void) };
        Ok(out)
    }

    /// A call returning a hash as a flat key, value, key, value list.
    fn pairs(&self, call: &str, ptr: *mut *mut c_char) -> Result<Vec<(String, String)>> {
        let flat = self.strings(call, ptr)?;
        Ok(flat.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect())
    }

    // --- handle set-up -------------------------------------------------------------------

    /// Under TCG, the appliance with an uncompressed kernel (see [`appliance`]); when it
    /// cannot be had, libguestfs's own, with the reason in the log.
    fn use_tcg_appliance(&self) -> Result<()> {
        if !appliance::wanted().map_err(|message| GuestError { call: "create".into(), message })? {
            return Ok(());
        }
        let path = unsafe { sys::guestfs_get_path(self.g.get()) };
        if path.is_null() {
            return Err(self.error("get_path"));
        }
        // A string the handle owns: copied, not freed.
        let path = unsafe { CStr::from_ptr(path) }.to_string_lossy().into_owned();
        let cachedir = self.string("get_cachedir", unsafe { sys::guestfs_get_cachedir(self.g.get()) })?;
        match appliance::for_tcg(&path, Path::new(&cachedir)) {
            Ok(dir) => {
                if let Some(log) = &self.log {
                    log.line(format!("appliance: {} (its kernel stored uncompressed, for TCG)", dir.display()));
                }
                let dir = cstring("set_path", &dir.to_string_lossy())?;
                self.check("set_path", unsafe { sys::guestfs_set_path(self.g.get(), dir.as_ptr()) })
            }
            Err(e) => {
                if let Some(log) = &self.log {
                    log.line(format!("using libguestfs's own appliance: {e:#}"));
                }
                Ok(())
            }
        }
    }

    pub fn set_verbose(&self, on: bool) -> Result<()> {
        self.check("set_verbose", unsafe { sys::guestfs_set_verbose(self.g.get(), on as c_int) })
    }

    /// Runs `f` with call tracing off, for calls whose arguments hold secrets (passwords,
    /// environment values); the caller logs what it did instead.
    pub fn untraced<T>(&self, f: impl FnOnce(&Guest) -> T) -> T {
        if self.log.is_none() {
            return f(self);
        }
        unsafe { sys::guestfs_set_trace(self.g.get(), 0) };
        let result = f(self);
        unsafe { sys::guestfs_set_trace(self.g.get(), 1) };
        result
    }

    pub fn set_network(&self, on: bool) -> Result<()> {
        self.check("set_network", unsafe { sys::guestfs_set_network(self.g.get(), on as c_int) })?;
        self.network.set(on);
        Ok(())
    }

    pub fn set_backend_settings(&self, settings: &[&str]) -> Result<()> {
        let owned = cstrings("set_backend_settings", settings)?;
        let ptrs = null_terminated(&owned);
        self.check("set_backend_settings", unsafe { sys::guestfs_set_backend_settings(self.g.get(), ptrs.as_ptr()) })
    }

    pub fn add_drive(&self, drive: Drive) -> Result<()> {
        let path = cstring("add_drive", &drive.path.to_string_lossy())?;
        let format = cstring("add_drive", drive.format)?;
        let discard = cstring("add_drive", "besteffort")?;
        let mut opts: sys::guestfs_add_drive_opts_argv = unsafe { std::mem::zeroed() };
        opts.bitmask = (1 << sys::GUESTFS_ADD_DRIVE_OPTS_READONLY) | (1 << sys::GUESTFS_ADD_DRIVE_OPTS_FORMAT);
        opts.readonly = drive.readonly as c_int;
        opts.format = format.as_ptr();
        if drive.discard && !drive.readonly {
            opts.bitmask |= 1 << sys::GUESTFS_ADD_DRIVE_OPTS_DISCARD;
            opts.discard = discard.as_ptr();
        }
        self.check("add_drive", unsafe { sys::guestfs_add_drive_opts_argv(self.g.get(), path.as_ptr(), &opts) })?;
        self.drives.borrow_mut().push(OwnedDrive {
            path: drive.path.to_path_buf(),
            format: drive.format.to_string(),
            readonly: drive.readonly,
            discard: drive.discard,
        });
        Ok(())
    }

    /// Starts the appliance. One whose kernel has not brought the daemon up within the
    /// launch timeout ([`appliance::launch_timeout`]) is taken for hung (under TCG a guest
    /// CPU has been seen to lose its timer during boot and sit idle for good) and is killed;
    /// the handle is made anew with the same settings and drives and launched once more.
    pub fn launch(&self) -> Result<()> {
        let timeout = appliance::launch_timeout().map_err(|message| GuestError { call: "launch".into(), message })?;
        let watchdog = appliance::LaunchWatchdog::start_with(timeout);
        let rc = unsafe { sys::guestfs_launch(self.g.get()) };
        if rc != -1 || !watchdog.fired() {
            return self.check("launch", rc);
        }
        let first = self.error("launch");
        let seconds = timeout.as_secs();
        eprintln!("the appliance did not come up within {seconds} s and was stopped; launching it again");
        if let Some(log) = &self.log {
            log.line(format!(
                "the appliance did not come up within {seconds} s and was stopped ({first}); launching it again"
            ));
        }
        self.create_handle()?;
        self.set_network(self.network.get())?;
        let drives = std::mem::take(&mut *self.drives.borrow_mut());
        for d in &drives {
            self.add_drive(Drive { path: &d.path, format: &d.format, readonly: d.readonly, discard: d.discard })?;
        }
        let watchdog = appliance::LaunchWatchdog::start_with(timeout);
        let rc = unsafe { sys::guestfs_launch(self.g.get()) };
        if rc == -1 && watchdog.fired() {
            return Err(GuestError {
                call: "launch".into(),
                message: format!(
                    "the appliance did not come up within {seconds} s, twice (PIPELINE_LAUNCH_TIMEOUT sets the limit; \
                     with -v the stage log holds its console)"
                ),
            });
        }
        self.check("launch", rc)
    }

    /// Syncs and stops the appliance, reporting write-back errors (drop alone would not).
    pub fn shutdown(&self) -> Result<()> {
        self.check("shutdown", unsafe { sys::guestfs_shutdown(self.g.get()) })
    }

    // --- inspection ----------------------------------------------------------------------

    pub fn inspect_os(&self) -> Result<Vec<String>> {
        self.strings("inspect_os", unsafe { sys::guestfs_inspect_os(self.g.get()) })
    }

    /// One of the `inspect_get_*` string getters, by name.
    pub fn inspect_get(&self, what: InspectField, root: &str) -> Result<String> {
        let r = cstring("inspect", root)?;
        let p = r.as_ptr();
        let ptr = unsafe {
            match what {
                InspectField::Type => sys::guestfs_inspect_get_type(self.g.get(), p),
                InspectField::Distro => sys::guestfs_inspect_get_distro(self.g.get(), p),
                InspectField::Arch => sys::guestfs_inspect_get_arch(self.g.get(), p),
                InspectField::PackageManagement => sys::guestfs_inspect_get_package_management(self.g.get(), p),
                InspectField::PackageFormat => sys::guestfs_inspect_get_package_format(self.g.get(), p),
                InspectField::Hostname => sys::guestfs_inspect_get_hostname(self.g.get(), p),
                InspectField::ProductName => sys::guestfs_inspect_get_product_name(self.g.get(), p),
            }
        };
        self.string(what.call(), ptr)
    }

    pub fn inspect_get_version(&self, root: &str) -> Result<(i32, i32)> {
        let r = cstring("inspect_get_major_version", root)?;
        let major = unsafe { sys::guestfs_inspect_get_major_version(self.g.get(), r.as_ptr()) };
        self.check("inspect_get_major_version", major)?;
        let minor = unsafe { sys::guestfs_inspect_get_minor_version(self.g.get(), r.as_ptr()) };
        self.check("inspect_get_minor_version", minor)?;
        Ok((major, minor))
    }

    pub fn inspect_get_mountpoints(&self, root: &str) -> Result<Vec<(String, String)>> {
        let r = cstring("inspect_get_mountpoints", root)?;
        self.pairs("inspect_get_mountpoints", unsafe { sys::guestfs_inspect_get_mountpoints(self.g.get(), r.as_ptr()) })
    }

    pub fn list_filesystems(&self) -> Result<Vec<(String, String)>> {
        self.pairs("list_filesystems", unsafe { sys::guestfs_list_filesystems(self.g.get()) })
    }

    pub fn list_partitions(&self) -> Result<Vec<String>> {
        self.strings("list_partitions", unsafe { sys::guestfs_list_partitions(self.g.get()) })
    }

    pub fn list_devices(&self) -> Result<Vec<String>> {
        self.strings("list_devices", unsafe { sys::guestfs_list_devices(self.g.get()) })
    }

    // --- block devices and filesystems --------------------------------------------------

    pub fn part_disk(&self, device: &str, table: &str) -> Result<()> {
        let (d, t) = (cstring("part_disk", device)?, cstring("part_disk", table)?);
        self.check("part_disk", unsafe { sys::guestfs_part_disk(self.g.get(), d.as_ptr(), t.as_ptr()) })
    }

    /// A new empty partition table (`msdos` or `gpt`).
    pub fn part_init(&self, device: &str, table: &str) -> Result<()> {
        let (d, t) = (cstring("part_init", device)?, cstring("part_init", table)?);
        self.check("part_init", unsafe { sys::guestfs_part_init(self.g.get(), d.as_ptr(), t.as_ptr()) })
    }

    /// A partition from `start` to `end` (sectors, inclusive); `kind` is `p`, `e` or `l`.
    pub fn part_add(&self, device: &str, kind: &str, start: i64, end: i64) -> Result<()> {
        let (d, k) = (cstring("part_add", device)?, cstring("part_add", kind)?);
        self.check("part_add", unsafe { sys::guestfs_part_add(self.g.get(), d.as_ptr(), k.as_ptr(), start, end) })
    }

    pub fn part_set_bootable(&self, device: &str, partnum: i32, bootable: bool) -> Result<()> {
        let d = cstring("part_set_bootable", device)?;
        self.check("part_set_bootable", unsafe {
            sys::guestfs_part_set_bootable(self.g.get(), d.as_ptr(), partnum, bootable as c_int)
        })
    }

    /// An ext2/3/4 superblock's fields as `tune2fs -l` names them, read by the appliance's
    /// own tune2fs (the guest needs none).
    pub fn tune2fs_l(&self, device: &str) -> Result<Vec<(String, String)>> {
        let d = cstring("tune2fs_l", device)?;
        self.pairs("tune2fs_l", unsafe { sys::guestfs_tune2fs_l(self.g.get(), d.as_ptr()) })
    }

    /// The GPT partition type GUID (e.g. the EFI system partition's).
    pub fn part_set_gpt_type(&self, device: &str, partnum: i32, guid: &str) -> Result<()> {
        let (d, t) = (cstring("part_set_gpt_type", device)?, cstring("part_set_gpt_type", guid)?);
        self.check("part_set_gpt_type", unsafe {
            sys::guestfs_part_set_gpt_type(self.g.get(), d.as_ptr(), partnum, t.as_ptr())
        })
    }

    pub fn mkfs(&self, fstype: &str, device: &str) -> Result<()> {
        self.mkfs_with_block_size(fstype, device, None)
    }

    /// mkfs with an explicit block size (mke2fs picks 1 KiB blocks for small filesystems).
    pub fn mkfs_with_block_size(&self, fstype: &str, device: &str, block_size: Option<u32>) -> Result<()> {
        let (f, d) = (cstring("mkfs", fstype)?, cstring("mkfs", device)?);
        let mut opts: sys::guestfs_mkfs_opts_argv = unsafe { std::mem::zeroed() };
        if let Some(bs) = block_size {
            opts.bitmask = 1 << sys::GUESTFS_MKFS_OPTS_BLOCKSIZE;
            opts.blocksize = bs as c_int;
        }
        self.check("mkfs", unsafe { sys::guestfs_mkfs_opts_argv(self.g.get(), f.as_ptr(), d.as_ptr(), &opts) })
    }

    /// The block size of the filesystem mounted at `path`.
    pub fn block_size(&self, path: &str) -> Result<u64> {
        Ok(self.statvfs(path)?.0)
    }

    /// The size in bytes of the filesystem mounted at `path`.
    pub fn filesystem_size(&self, path: &str) -> Result<u64> {
        let (_, fragment, blocks) = self.statvfs(path)?;
        Ok(fragment * blocks)
    }

    /// statvfs: (block size, fragment size, size in fragments).
    fn statvfs(&self, path: &str) -> Result<(u64, u64, u64)> {
        let p = cstring("statvfs", path)?;
        let st = unsafe { sys::guestfs_statvfs(self.g.get(), p.as_ptr()) };
        if st.is_null() {
            return Err(self.error("statvfs"));
        }
        let values = unsafe { ((*st).bsize as u64, (*st).frsize as u64, (*st).blocks as u64) };
        unsafe { sys::guestfs_free_statvfs(st) };
        Ok(values)
    }

    pub fn vfs_uuid(&self, mountable: &str) -> Result<String> {
        let m = cstring("vfs_uuid", mountable)?;
        self.string("vfs_uuid", unsafe { sys::guestfs_vfs_uuid(self.g.get(), m.as_ptr()) })
    }

    pub fn mount(&self, mountable: &str, mountpoint: &str) -> Result<()> {
        let (m, p) = (cstring("mount", mountable)?, cstring("mount", mountpoint)?);
        self.check("mount", unsafe { sys::guestfs_mount(self.g.get(), m.as_ptr(), p.as_ptr()) })
    }

    pub fn mount_ro(&self, mountable: &str, mountpoint: &str) -> Result<()> {
        let (m, p) = (cstring("mount_ro", mountable)?, cstring("mount_ro", mountpoint)?);
        self.check("mount_ro", unsafe { sys::guestfs_mount_ro(self.g.get(), m.as_ptr(), p.as_ptr()) })
    }

    pub fn umount_all(&self) -> Result<()> {
        self.check("umount_all", unsafe { sys::guestfs_umount_all(self.g.get()) })
    }

    /// Fills the free space of the filesystem holding `dir` with zeros, then frees it.
    pub fn zero_free_space(&self, dir: &str) -> Result<()> {
        let d = cstring("zero_free_space", dir)?;
        self.check("zero_free_space", unsafe { sys::guestfs_zero_free_space(self.g.get(), d.as_ptr()) })
    }

    /// Discards the free space of the filesystem mounted at `mountpoint`.
    pub fn fstrim(&self, mountpoint: &str) -> Result<()> {
        let m = cstring("fstrim", mountpoint)?;
        let opts: sys::guestfs_fstrim_argv = unsafe { std::mem::zeroed() };
        self.check("fstrim", unsafe { sys::guestfs_fstrim_argv(self.g.get(), m.as_ptr(), &opts) })
    }

    // --- growing a partition and what it holds ------------------------------------------

    /// The partitions of a disk: (number, first byte, last byte), in disk order.
    pub fn part_list(&self, device: &str) -> Result<Vec<(i32, u64, u64)>> {
        let d = cstring("part_list", device)?;
        let list = unsafe { sys::guestfs_part_list(self.g.get(), d.as_ptr()) };
        if list.is_null() {
            return Err(self.error("part_list"));
        }
        let parts = unsafe { std::slice::from_raw_parts((*list).val, (*list).len as usize) }
            .iter()
            .map(|p| (p.part_num, p.part_start, p.part_end))
            .collect();
        unsafe { sys::guestfs_free_partition_list(list) };
        Ok(parts)
    }

    /// The packages installed in the inspected guest `root`, read by libguestfs from the
    /// guest's package database (dpkg's status file, the rpm database through librpm, ...)
    /// without running guest code. The guest's filesystems must be mounted.
    pub fn inspect_list_applications(&self, root: &str) -> Result<Vec<Package>> {
        let r = cstring("inspect_list_applications2", root)?;
        let list = unsafe { sys::guestfs_inspect_list_applications2(self.g.get(), r.as_ptr()) };
        if list.is_null() {
            return Err(self.error("inspect_list_applications2"));
        }
        let text = |p: *mut c_char| {
            if p.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        let apps = unsafe { std::slice::from_raw_parts((*list).val, (*list).len as usize) }
            .iter()
            .map(|a| {
                let (version, release) = (text(a.app2_version), text(a.app2_release));
                let mut full = if a.app2_epoch > 0 { format!("{}:{version}", a.app2_epoch) } else { version };
                if !release.is_empty() {
                    full = format!("{full}-{release}");
                }
                Package {
                    name: text(a.app2_name),
                    version: full,
                    arch: text(a.app2_arch),
                    source: Some(text(a.app2_source_package)).filter(|s| !s.is_empty()),
                    licenses: Vec::new(),
                }
            })
            .collect();
        unsafe { sys::guestfs_free_application2_list(list) };
        Ok(apps)
    }

    /// `/dev/sda1` → `/dev/sda`.
    pub fn part_to_dev(&self, partition: &str) -> Result<String> {
        let p = cstring("part_to_dev", partition)?;
        self.string("part_to_dev", unsafe { sys::guestfs_part_to_dev(self.g.get(), p.as_ptr()) })
    }

    pub fn part_to_partnum(&self, partition: &str) -> Result<i32> {
        let p = cstring("part_to_partnum", partition)?;
        let n = unsafe { sys::guestfs_part_to_partnum(self.g.get(), p.as_ptr()) };
        self.check("part_to_partnum", n)?;
        Ok(n)
    }

    /// `msdos` or `gpt`.
    pub fn part_get_parttype(&self, device: &str) -> Result<String> {
        let d = cstring("part_get_parttype", device)?;
        self.string("part_get_parttype", unsafe { sys::guestfs_part_get_parttype(self.g.get(), d.as_ptr()) })
    }

    /// Moves a GPT's backup header to the end of a grown disk.
    pub fn part_expand_gpt(&self, device: &str) -> Result<()> {
        let d = cstring("part_expand_gpt", device)?;
        self.check("part_expand_gpt", unsafe { sys::guestfs_part_expand_gpt(self.g.get(), d.as_ptr()) })
    }

    /// Size of a block device in bytes.
    pub fn blockdev_getsize64(&self, device: &str) -> Result<u64> {
        let d = cstring("blockdev_getsize64", device)?;
        let n = unsafe { sys::guestfs_blockdev_getsize64(self.g.get(), d.as_ptr()) };
        if n < 0 {
            return Err(self.error("blockdev_getsize64"));
        }
        Ok(n as u64)
    }

    /// Logical sector size of a block device (the unit of partition tables).
    pub fn blockdev_getss(&self, device: &str) -> Result<u64> {
        let d = cstring("blockdev_getss", device)?;
        let n = unsafe { sys::guestfs_blockdev_getss(self.g.get(), d.as_ptr()) };
        self.check("blockdev_getss", n)?;
        Ok(n as u64)
    }

    /// Moves the end of partition `partnum` to sector `end_sector` (its start stays).
    pub fn part_resize(&self, device: &str, partnum: i32, end_sector: i64) -> Result<()> {
        let d = cstring("part_resize", device)?;
        self.check("part_resize", unsafe { sys::guestfs_part_resize(self.g.get(), d.as_ptr(), partnum, end_sector) })
    }

    pub fn vfs_type(&self, mountable: &str) -> Result<String> {
        let m = cstring("vfs_type", mountable)?;
        self.string("vfs_type", unsafe { sys::guestfs_vfs_type(self.g.get(), m.as_ptr()) })
    }

    /// Forced e2fsck, which resize2fs requires first.
    pub fn e2fsck_f(&self, device: &str) -> Result<()> {
        let d = cstring("e2fsck_f", device)?;
        self.check("e2fsck_f", unsafe { sys::guestfs_e2fsck_f(self.g.get(), d.as_ptr()) })
    }

    /// Grows an ext2/3/4 filesystem to fill its device.
    pub fn resize2fs(&self, device: &str) -> Result<()> {
        let d = cstring("resize2fs", device)?;
        self.check("resize2fs", unsafe { sys::guestfs_resize2fs(self.g.get(), d.as_ptr()) })
    }

    /// Grows a mounted XFS filesystem's data section to fill its device.
    pub fn xfs_growfs(&self, mountpoint: &str) -> Result<()> {
        let m = cstring("xfs_growfs", mountpoint)?;
        let mut opts: sys::guestfs_xfs_growfs_argv = unsafe { std::mem::zeroed() };
        opts.bitmask = 1 << sys::GUESTFS_XFS_GROWFS_DATASEC;
        opts.datasec = 1;
        self.check("xfs_growfs", unsafe { sys::guestfs_xfs_growfs_argv(self.g.get(), m.as_ptr(), &opts) })
    }

    /// Grows a mounted btrfs filesystem to fill its device.
    pub fn btrfs_filesystem_resize(&self, mountpoint: &str) -> Result<()> {
        let m = cstring("btrfs_filesystem_resize", mountpoint)?;
        let opts: sys::guestfs_btrfs_filesystem_resize_argv = unsafe { std::mem::zeroed() };
        self.check("btrfs_filesystem_resize", unsafe {
            sys::guestfs_btrfs_filesystem_resize_argv(self.g.get(), m.as_ptr(), &opts)
        })
    }

    /// Grows an LVM physical volume to fill its device.
    pub fn pvresize(&self, device: &str) -> Result<()> {
        let d = cstring("pvresize", device)?;
        self.check("pvresize", unsafe { sys::guestfs_pvresize(self.g.get(), d.as_ptr()) })
    }

    // --- LVM ---------------------------------------------------------------------------

    pub fn pvs(&self) -> Result<Vec<String>> {
        self.strings("pvs", unsafe { sys::guestfs_pvs(self.g.get()) })
    }

    pub fn vgs(&self) -> Result<Vec<String>> {
        self.strings("vgs", unsafe { sys::guestfs_vgs(self.g.get()) })
    }

    pub fn pvcreate(&self, device: &str) -> Result<()> {
        let d = cstring("pvcreate", device)?;
        self.check("pvcreate", unsafe { sys::guestfs_pvcreate(self.g.get(), d.as_ptr()) })
    }

    pub fn vgcreate(&self, name: &str, pvs: &[&str]) -> Result<()> {
        let n = cstring("vgcreate", name)?;
        let owned = cstrings("vgcreate", pvs)?;
        let ptrs = null_terminated(&owned);
        self.check("vgcreate", unsafe { sys::guestfs_vgcreate(self.g.get(), n.as_ptr(), ptrs.as_ptr()) })
    }

    /// A logical volume taking `percent` of the group's free space.
    pub fn lvcreate_free(&self, name: &str, vg: &str, percent: i32) -> Result<()> {
        let (n, v) = (cstring("lvcreate_free", name)?, cstring("lvcreate_free", vg)?);
        self.check("lvcreate_free", unsafe {
            sys::guestfs_lvcreate_free(self.g.get(), n.as_ptr(), v.as_ptr(), percent)
        })
    }

    pub fn pvuuid(&self, device: &str) -> Result<String> {
        let d = cstring("pvuuid", device)?;
        self.string("pvuuid", unsafe { sys::guestfs_pvuuid(self.g.get(), d.as_ptr()) })
    }

    pub fn vguuid(&self, vg: &str) -> Result<String> {
        let v = cstring("vguuid", vg)?;
        self.string("vguuid", unsafe { sys::guestfs_vguuid(self.g.get(), v.as_ptr()) })
    }

    /// Volume groups: (name, size, free bytes).
    pub fn vgs_full(&self) -> Result<Vec<(String, u64, u64)>> {
        let list = unsafe { sys::guestfs_vgs_full(self.g.get()) };
        if list.is_null() {
            return Err(self.error("vgs_full"));
        }
        let vgs = unsafe { std::slice::from_raw_parts((*list).val, (*list).len as usize) }
            .iter()
            .map(|vg| {
                let name = unsafe { CStr::from_ptr(vg.vg_name) }.to_string_lossy().into_owned();
                (name, vg.vg_size, vg.vg_free)
            })
            .collect();
        unsafe { sys::guestfs_free_lvm_vg_list(list) };
        Ok(vgs)
    }

    pub fn vg_activate_all(&self, activate: bool) -> Result<()> {
        self.check("vg_activate_all", unsafe { sys::guestfs_vg_activate_all(self.g.get(), activate as c_int) })
    }

    pub fn pvchange_uuid_all(&self) -> Result<()> {
        self.check("pvchange_uuid_all", unsafe { sys::guestfs_pvchange_uuid_all(self.g.get()) })
    }

    pub fn vgchange_uuid_all(&self) -> Result<()> {
        self.check("vgchange_uuid_all", unsafe { sys::guestfs_vgchange_uuid_all(self.g.get()) })
    }

    // --- files -------------------------------------------------------------------------

    pub fn glob_expand(&self, pattern: &str) -> Result<Vec<String>> {
        let p = cstring("glob_expand", pattern)?;
        self.strings("glob_expand", unsafe { sys::guestfs_glob_expand(self.g.get(), p.as_ptr()) })
    }

    pub fn ls(&self, dir: &str) -> Result<Vec<String>> {
        let d = cstring("ls", dir)?;
        self.strings("ls", unsafe { sys::guestfs_ls(self.g.get(), d.as_ptr()) })
    }

    /// Every path below `dir`, relative to it.
    pub fn find(&self, dir: &str) -> Result<Vec<String>> {
        let d = cstring("find", dir)?;
        self.strings("find", unsafe { sys::guestfs_find(self.g.get(), d.as_ptr()) })
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        let p = cstring("exists", path)?;
        self.flag("exists", unsafe { sys::guestfs_exists(self.g.get(), p.as_ptr()) })
    }

    /// A regular file, not following symlinks.
    pub fn is_file(&self, path: &str) -> Result<bool> {
        let p = cstring("is_file", path)?;
        let opts = sys::guestfs_is_file_opts_argv {
            bitmask: 1 << sys::GUESTFS_IS_FILE_OPTS_FOLLOWSYMLINKS,
            followsymlinks: 0,
        };
        self.flag("is_file", unsafe { sys::guestfs_is_file_opts_argv(self.g.get(), p.as_ptr(), &opts) })
    }

    /// A directory, not following symlinks.
    pub fn is_dir(&self, path: &str) -> Result<bool> {
        let p = cstring("is_dir", path)?;
        let opts =
            sys::guestfs_is_dir_opts_argv { bitmask: 1 << sys::GUESTFS_IS_DIR_OPTS_FOLLOWSYMLINKS, followsymlinks: 0 };
        self.flag("is_dir", unsafe { sys::guestfs_is_dir_opts_argv(self.g.get(), p.as_ptr(), &opts) })
    }

    pub fn is_symlink(&self, path: &str) -> Result<bool> {
        let p = cstring("is_symlink", path)?;
        self.flag("is_symlink", unsafe { sys::guestfs_is_symlink(self.g.get(), p.as_ptr()) })
    }

    /// The mode bits of a path (not following symlinks).
    pub fn lstat_mode(&self, path: &str) -> Result<u32> {
        Ok(self.lstat(path)?.0)
    }

    /// (uid, gid) of a path, not following a final symlink.
    pub fn owner(&self, path: &str) -> Result<(i64, i64)> {
        let (_, uid, gid) = self.lstat(path)?;
        Ok((uid, gid))
    }

    /// The modification time of a path as (seconds, nanoseconds), not following symlinks.
    pub fn mtime(&self, path: &str) -> Result<(i64, i64)> {
        let p = cstring("lstatns", path)?;
        let st = unsafe { sys::guestfs_lstatns(self.g.get(), p.as_ptr()) };
        if st.is_null() {
            return Err(self.error("lstatns"));
        }
        let values = unsafe { ((*st).st_mtime_sec, (*st).st_mtime_nsec) };
        unsafe { sys::guestfs_free_statns(st) };
        Ok(values)
    }

    fn lstat(&self, path: &str) -> Result<(u32, i64, i64)> {
        let p = cstring("lstatns", path)?;
        let st = unsafe { sys::guestfs_lstatns(self.g.get(), p.as_ptr()) };
        if st.is_null() {
            return Err(self.error("lstatns"));
        }
        let values = unsafe { ((*st).st_mode as u32, (*st).st_uid, (*st).st_gid) };
        unsafe { sys::guestfs_free_statns(st) };
        Ok(values)
    }

    pub fn rm(&self, path: &str) -> Result<()> {
        let p = cstring("rm", path)?;
        self.check("rm", unsafe { sys::guestfs_rm(self.g.get(), p.as_ptr()) })
    }

    /// Removes a file; a missing one is fine.
    pub fn rm_f(&self, path: &str) -> Result<()> {
        let p = cstring("rm_f", path)?;
        self.check("rm_f", unsafe { sys::guestfs_rm_f(self.g.get(), p.as_ptr()) })
    }

    pub fn rm_rf(&self, path: &str) -> Result<()> {
        let p = cstring("rm_rf", path)?;
        self.check("rm_rf", unsafe { sys::guestfs_rm_rf(self.g.get(), p.as_ptr()) })
    }

    pub fn truncate(&self, path: &str) -> Result<()> {
        let p = cstring("truncate", path)?;
        self.check("truncate", unsafe { sys::guestfs_truncate(self.g.get(), p.as_ptr()) })
    }

    pub fn touch(&self, path: &str) -> Result<()> {
        let p = cstring("touch", path)?;
        self.check("touch", unsafe { sys::guestfs_touch(self.g.get(), p.as_ptr()) })
    }

    pub fn mkdir_p(&self, path: &str) -> Result<()> {
        let p = cstring("mkdir_p", path)?;
        self.check("mkdir_p", unsafe { sys::guestfs_mkdir_p(self.g.get(), p.as_ptr()) })
    }

    pub fn chmod(&self, mode: u32, path: &str) -> Result<()> {
        let p = cstring("chmod", path)?;
        self.check("chmod", unsafe { sys::guestfs_chmod(self.g.get(), mode as c_int, p.as_ptr()) })
    }

    pub fn chown(&self, uid: i32, gid: i32, path: &str) -> Result<()> {
        let p = cstring("chown", path)?;
        self.check("chown", unsafe { sys::guestfs_chown(self.g.get(), uid, gid, p.as_ptr()) })
    }

    /// `ln -sf target link`.
    pub fn ln_sf(&self, target: &str, link: &str) -> Result<()> {
        let (t, l) = (cstring("ln_sf", target)?, cstring("ln_sf", link)?);
        self.check("ln_sf", unsafe { sys::guestfs_ln_sf(self.g.get(), t.as_ptr(), l.as_ptr()) })
    }

    pub fn write(&self, path: &str, content: &[u8]) -> Result<()> {
        let p = cstring("write", path)?;
        self.check("write", unsafe {
            sys::guestfs_write(self.g.get(), p.as_ptr(), content.as_ptr() as *const c_char, content.len())
        })
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let p = cstring("read_file", path)?;
        let mut size: usize = 0;
        let ptr = unsafe { sys::guestfs_read_file(self.g.get(), p.as_ptr(), &mut size) };
        if ptr.is_null() {
            return Err(self.error("read_file"));
        }
        let data = unsafe { std::slice::from_raw_parts(ptr as *const u8, size) }.to_vec();
        unsafe { libc::free(ptr as *mut c_void) };
        Ok(data)
    }

    pub fn read_string(&self, path: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read_file(path)?).into_owned())
    }

    /// Copies a host file into the guest at `remote`.
    pub fn upload(&self, local: &Path, remote: &str) -> Result<()> {
        let (l, r) = (cstring("upload", &local.to_string_lossy())?, cstring("upload", remote)?);
        self.check("upload", unsafe { sys::guestfs_upload(self.g.get(), l.as_ptr(), r.as_ptr()) })
    }

    /// Copies a host file or directory tree into the guest directory `remote_dir`.
    pub fn copy_in(&self, local: &Path, remote_dir: &str) -> Result<()> {
        let (l, r) = (cstring("copy_in", &local.to_string_lossy())?, cstring("copy_in", remote_dir)?);
        self.check("copy_in", unsafe { sys::guestfs_copy_in(self.g.get(), l.as_ptr(), r.as_ptr()) })
    }

    /// Unpacks an uncompressed tar file from the host into the guest directory.
    /// Unpacks a tar file into `dir`, extended attributes included (file capabilities such as
    /// ping's `cap_net_raw` live in `security.capability`).
    pub fn tar_in(&self, tarfile: &Path, dir: &str) -> Result<()> {
        let (t, d) = (cstring("tar_in", &tarfile.to_string_lossy())?, cstring("tar_in", dir)?);
        let mut opts: sys::guestfs_tar_in_opts_argv = unsafe { std::mem::zeroed() };
        opts.bitmask = 1 << sys::GUESTFS_TAR_IN_OPTS_XATTRS;
        opts.xattrs = 1;
        self.check("tar_in", unsafe { sys::guestfs_tar_in_opts_argv(self.g.get(), t.as_ptr(), d.as_ptr(), &opts) })
    }

    /// Packs the guest directory `dir` as an uncompressed tar written to the host file
    /// `tarfile` (a pipe's `/dev/fd/N` works: the caller reads while the appliance writes).
    pub fn tar_out(&self, dir: &str, tarfile: &Path, opts: &TarOut) -> Result<()> {
        let (d, t) = (cstring("tar_out", dir)?, cstring("tar_out", &tarfile.to_string_lossy())?);
        let excludes = cstrings("tar_out", &opts.excludes.iter().map(String::as_str).collect::<Vec<_>>())?;
        let exclude_ptrs = null_terminated(&excludes);
        let mut o: sys::guestfs_tar_out_opts_argv = unsafe { std::mem::zeroed() };
        o.bitmask = (1 << sys::GUESTFS_TAR_OUT_OPTS_NUMERICOWNER) | (1 << sys::GUESTFS_TAR_OUT_OPTS_XATTRS);
        o.numericowner = opts.numeric_owner as c_int;
        o.xattrs = opts.xattrs as c_int;
        if !opts.excludes.is_empty() {
            o.bitmask |= 1 << sys::GUESTFS_TAR_OUT_OPTS_EXCLUDES;
            o.excludes = exclude_ptrs.as_ptr();
        }
        self.check("tar_out", unsafe { sys::guestfs_tar_out_opts_argv(self.g.get(), d.as_ptr(), t.as_ptr(), &o) })
    }

    /// Copies the guest file `remote` to the host file `local`.
    pub fn download(&self, remote: &str, local: &Path) -> Result<()> {
        let (r, l) = (cstring("download", remote)?, cstring("download", &local.to_string_lossy())?);
        self.check("download", unsafe { sys::guestfs_download(self.g.get(), r.as_ptr(), l.as_ptr()) })
    }

    /// The target of a symbolic link, as written in it.
    pub fn readlink(&self, path: &str) -> Result<String> {
        let p = cstring("readlink", path)?;
        self.string("readlink", unsafe { sys::guestfs_readlink(self.g.get(), p.as_ptr()) })
    }

    /// The value of one extended attribute of `path` (not following a final symlink).
    pub fn lgetxattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        let (p, n) = (cstring("lgetxattr", path)?, cstring("lgetxattr", name)?);
        let mut size: usize = 0;
        let ptr = unsafe { sys::guestfs_lgetxattr(self.g.get(), p.as_ptr(), n.as_ptr(), &mut size) };
        if ptr.is_null() {
            return Err(self.error("lgetxattr"));
        }
        let value = unsafe { std::slice::from_raw_parts(ptr as *const u8, size) }.to_vec();
        unsafe { libc::free(ptr as *mut c_void) };
        Ok(value)
    }

    // --- commands inside the guest ------------------------------------------------------

    /// Runs `/bin/sh -c command` chrooted into the mounted guest; returns its stdout.
    pub fn sh(&self, command: &str) -> Result<String> {
        let c = cstring("sh", command)?;
        self.string("sh", unsafe { sys::guestfs_sh(self.g.get(), c.as_ptr()) })
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        unsafe { sys::guestfs_close(self.g.get()) };
        // The callback's StageLog is dropped after the handle that could call it.
        self.log.take();
    }
}

/// Options of [`Guest::tar_out`].
#[derive(Debug, Clone, Default)]
pub struct TarOut {
    /// Owners as numbers, not names: the guest's users, not the appliance's, own the files.
    pub numeric_owner: bool,
    /// Extended attributes (`security.capability` and the like), as PAX records.
    pub xattrs: bool,
    /// tar `--exclude` patterns, relative to the packed directory (`./proc/*`).
    pub excludes: Vec<String>,
}

/// The string-valued inspection getters.
#[derive(Debug, Clone, Copy)]
pub enum InspectField {
    Type,
    Distro,
    Arch,
    PackageManagement,
    PackageFormat,
    Hostname,
    ProductName,
}

impl InspectField {
    fn call(self) -> &'static str {
        match self {
            InspectField::Type => "inspect_get_type",
            InspectField::Distro => "inspect_get_distro",
            InspectField::Arch => "inspect_get_arch",
            InspectField::PackageManagement => "inspect_get_package_management",
            InspectField::PackageFormat => "inspect_get_package_format",
            InspectField::Hostname => "inspect_get_hostname",
            InspectField::ProductName => "inspect_get_product_name",
        }
    }
}
