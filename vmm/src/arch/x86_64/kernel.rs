//! Loading the kernel image: an ELF vmlinux or a bzImage, told apart by their magic numbers.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{XLF_KERNEL_64, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::HIMEM_START;

/// Offset of the bzImage's 64-bit entry point from where its protected-mode code is loaded.
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// Offset of the "HdrS" magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
/// The ELF magic.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// "HdrS".
const HDRS_MAGIC: [u8; 4] = *b"HdrS";

/// The kernel image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF vmlinux, entered at its ELF entry point.
    Elf,
    /// A bzImage, entered at its 64-bit entry point.
    BzImage,
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The format that was loaded.
    pub format: KernelFormat,
    /// Guest address of the 64-bit entry point.
    pub entry: u64,
    /// First guest byte the kernel occupies.
    pub start: u64,
    /// One past the last guest byte the kernel needs, including what it decompresses into
    /// (bzImage `init_size`) or its bss (ELF `p_memsz`).
    pub end: u64,
    /// The bzImage's setup header, for the zero page.
    pub setup_header: Option<setup_header>,
    /// The 32-bit PVH entry point an ELF kernel offers in its notes
    /// (`XEN_ELFNOTE_PHYS32_ENTRY`).
    pub pvh_entry: Option<u64>,
}

/// The kernel cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadKernelError {
    /// The file cannot be opened or read.
    #[error("--kernel {}: cannot be read", path.display())]
    Read {
        /// The kernel path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("--kernel {}: not a kernel (neither an ELF vmlinux nor a bzImage)", path.display())]
    NotAKernel {
        /// The kernel path.
        path: PathBuf,
    },
    /// A bzImage without a 64-bit entry point.
    #[error("--kernel {}: the bzImage has no 64-bit entry point", path.display())]
    No64BitEntry {
        /// The kernel path.
        path: PathBuf,
    },
    /// linux-loader refused the image.
    #[error("--kernel {}: cannot be loaded", path.display())]
    Load {
        /// The kernel path.
        path: PathBuf,
        /// linux-loader's reason.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel does not fit in low guest memory.
    #[error(
        "--kernel {}: needs guest memory up to {} MiB, --memory gives {} MiB below the 32-bit hole",
        path.display(), end.div_ceil(1 << 20), available >> 20
    )]
    TooLittleMemory {
        /// The kernel path.
        path: PathBuf,
        /// One past the last byte the kernel needs.
        end: u64,
        /// Bytes of RAM from address 0 on.
        available: u64,
    },
}

/// Loads the kernel at `path` into `mem`, whose RAM from address 0 is `low_ram` bytes long.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    low_ram: u64,
) -> Result<LoadedKernel, LoadKernelError> {
    let read_err = |source| LoadKernelError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let file_len = file.metadata().map_err(read_err)?.len();
    let format =
        detect_format(&mut file)
            .map_err(read_err)?
            .ok_or_else(|| LoadKernelError::NotAKernel {
                path: path.to_owned(),
            })?;
    let too_little = |end| LoadKernelError::TooLittleMemory {
        path: path.to_owned(),
        end,
        available: low_ram,
    };
    if HIMEM_START + file_len > low_ram {
        return Err(too_little(HIMEM_START + file_len));
    }
    let himem = Some(GuestAddress(HIMEM_START));
    let load_err = |source| LoadKernelError::Load {
        path: path.to_owned(),
        source,
    };
    let loaded = match format {
        KernelFormat::Elf => {
            let result = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            let pvh_entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(pvh) => Some(pvh.0),
                _ => None,
            };
            LoadedKernel {
                format,
                entry: result.kernel_load.0,
                start: result.kernel_load.0.min(HIMEM_START),
                end: result.kernel_end,
                setup_header: None,
                pvh_entry,
            }
        }
        KernelFormat::BzImage => {
            let result = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            let header = result.setup_header.unwrap_or_default();
            if header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoadKernelError::No64BitEntry {
                    path: path.to_owned(),
                });
            }
            let start = result.kernel_load.0;
            let end = result.kernel_end.max(start + u64::from(header.init_size));
            LoadedKernel {
                format,
                entry: start + BZIMAGE_ENTRY_64_OFFSET,
                start,
                end,
                setup_header: Some(header),
                pvh_entry: None,
            }
        }
    };
    if loaded.end > low_ram {
        return Err(too_little(loaded.end));
    }
    tracing::debug!(
        format = ?loaded.format,
        entry = loaded.entry,
        start = loaded.start,
        end = loaded.end,
        pvh_entry = loaded.pvh_entry,
        "kernel loaded"
    );
    Ok(loaded)
}

/// Tells an ELF from a bzImage by their magic numbers; `None` for anything else.
fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    let mut magic = [0u8; 4];
    file.rewind()?;
    if read_full(file, &mut magic)? && magic == ELF_MAGIC {
        return Ok(Some(KernelFormat::Elf));
    }
    file.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))?;
    if read_full(file, &mut magic)? && magic == HDRS_MAGIC {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// Fills `buf`, or returns false at end of file.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<bool> {
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}
