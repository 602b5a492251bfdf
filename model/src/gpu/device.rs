//! One CUDA device: context (the primary one, shared with anything else in the process), our stream,
//! the NVRTC-compiled kernels, and [`DevBuf`], an owned device allocation addressed by raw pointer
//! (kernels take pointers and byte offsets; typed views would only add ceremony here).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    PinnedHostSlice,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::error::{ModelError, Result};

const SOURCE: &str = include_str!("kernels.cu");

/// Maps any driver/NVRTC error to [`ModelError::Device`] with what was being done.
pub fn dev_err<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> ModelError {
    move |e| ModelError::Device(format!("{what}: {e:?}"))
}

macro_rules! funcs {
    ($($name:ident),* ; $($vname:ident [$($suffix:literal),*]),* $(,)?) => {
        /// Every kernel of `kernels.cu`; a kernel instantiated several ways as an array of its
        /// instantiations, named by suffix (the order its launch indexes them in).
        pub struct Funcs {
            $(pub $name: CudaFunction,)*
            $(pub $vname: [CudaFunction; [$($suffix),*].len()],)*
        }
        impl Funcs {
            fn load(m: &Arc<cudarc::driver::CudaModule>) -> Result<Self> {
                let load = |name: &'static str| m.load_function(name).map_err(dev_err(name));
                Ok(Self {
                    $($name: load(stringify!($name))?,)*
                    $($vname: [$(load(concat!(stringify!($vname), $suffix))?),*],)*
                })
            }
        }
    };
}

funcs!(
    embed_rows,
    mtp_input,
    copy_rows,
    prep_rows,
    gemm_fp8_m16,
    gemm_fp8_m64,
    gemm_bf16_m16,
    gemm_bf16_m64,
    scale_out,
    rope_kv,
    attn_d32,
    attn_d64,
    attn_d128,
    attn_combine,
    attn_f8_d32,
    attn_f8_d64,
    attn_f8_d128,
    attn_f8h_d32,
    attn_f8h_d64,
    attn_f8h_d128,
    router_logits,
    router_gemm,
    moe_topk,
    moe_route,
    moe_plan,
    moe_combine,
    gemv_bf16_1,
    gemv_bf16_2,
    gemv_bf16_3,
    gemv_bf16_4,
    moe_gemv_bf16,
    sample_part,
    sample_rows,
    sample_thresh,
    fill_fp8,
    fill_bf16,
    fill_f32,
    fill_f32_rand;
    // FP8 weights with per-channel (_c) or block (_b) scales (gemv::fp8_variant); the dense GEMV
    // also per input mode 0-2, the QKV GEMV for mode 1, the MoE down for rows SiLU·up already or
    // not (_silu)
    gemv_fp8["_c0", "_c1", "_c2", "_b0", "_b1", "_b2"],
    gemv_fp8_qkv["_c1", "_b1"],
    gemv_fp8_route["_c", "_b"],
    moe_gemv_fp8_dn["_c", "_b", "_c_silu", "_b_silu"],
    moe_gemv_fp8_gu["_c", "_b"],
    moe_gemv_fp8_flat["_c", "_b"],
    moe_gemv_fp8_flat_route["_c", "_b"],
);

impl Funcs {
    /// The kernels that stage rows in dynamic shared memory beyond the default limit.
    fn gemv(&self) -> impl Iterator<Item = &CudaFunction> {
        let bf16 = [&self.gemv_bf16_1, &self.gemv_bf16_2, &self.gemv_bf16_3];
        bf16.into_iter()
            .chain([&self.gemv_bf16_4, &self.moe_gemv_bf16])
            .chain(self.gemv_fp8.iter())
            .chain(self.gemv_fp8_qkv.iter())
            .chain(self.gemv_fp8_route.iter())
            .chain(self.moe_gemv_fp8_dn.iter())
            .chain(self.moe_gemv_fp8_gu.iter())
            .chain(self.moe_gemv_fp8_flat.iter())
            .chain(self.moe_gemv_fp8_flat_route.iter())
    }

    /// The attention kernels with their head size.
    fn attn(&self) -> [(&CudaFunction, usize); 9] {
        [
            (&self.attn_d32, 32),
            (&self.attn_d64, 64),
            (&self.attn_d128, 128),
            (&self.attn_f8_d32, 32),
            (&self.attn_f8_d64, 64),
            (&self.attn_f8_d128, 128),
            (&self.attn_f8h_d32, 32),
            (&self.attn_f8h_d64, 64),
            (&self.attn_f8h_d128, 128),
        ]
    }
}

/// Dynamic shared memory of the attention kernel for head size `d`: two BF16 K/V stages, or two raw
/// FP8 stages plus the BF16 pair they are widened into (the larger of the two).
pub const fn attn_smem(d: usize) -> usize {
    let bf16 = 2 * 2 * 64 * (d + 8) * 2;
    let fp8 = 2 * 2 * 64 * (d + 16) + 2 * 64 * (d + 8) * 2;
    if bf16 > fp8 {
        bf16
    } else {
        fp8
    }
}

/// Dynamic shared memory of the GEMM kernels for a tile height `bm`: two stages of A and W tiles.
pub const fn gemm_smem(bm: usize) -> usize {
    2 * (bm + 128) * 144
}

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub f: Funcs,
    pub name: String,
    pub sm_count: usize,
    /// Dynamic shared memory the GEMV kernels may use per block (bytes).
    pub gemv_smem: usize,
    /// Shared memory of one SM (bytes): how many GEMV blocks are resident at once.
    pub smem_per_sm: usize,
    /// Kernels launched eagerly use programmatic dependent launch (sm_90 and newer; see
    /// `PDL_ENTRY` in kernels.cu): a kernel is scheduled while the previous one finishes. On the
    /// H200 (runs 40/41, same machine) it made eager steps faster (MTP verify at batch 1: 10.1
    /// against 10.9 ms; eager decode at batch 8: 21.0 against 22.1) and replayed graphs slower
    /// (decode at batch 1: 7.65 against 7.35 ms), so launches being captured into a graph
    /// ([`Gpu::set_capturing`]) go without it unless [`Gpu::pdl_graphs`] (the engine sets that
    /// per batch bucket: `GpuModel::pdl_graph_batch`). `GLMFLEET_PDL=0` turns it off.
    pub pdl: bool,
    /// Kernels can run as thread-block clusters of up to 16 blocks (sm_90 and newer; the attention
    /// kernels allow the 16 beyond the portable 8): blocks of a cluster read each other's shared
    /// memory (`launch!`'s `cluster` form).
    pub clusters: bool,
    /// PDL also for launches being captured into a graph ([`Gpu::set_pdl_graphs`]).
    pdl_graphs: AtomicBool,
    /// Set while a graph is being captured on our stream: launches then go without PDL, and the
    /// engine takes no path that waits for the host.
    capturing: AtomicBool,
    /// Page-locked staging for large device-to-host copies ([`Gpu::download_f32`]), allocated on
    /// first use; `None` inside when the allocation failed (copies then go pageable).
    staging: Mutex<Option<Option<PinnedHostSlice<u8>>>>,
    /// The step timeline's device records, how many fit, and their count (`GLMFLEET_TRACE=1`:
    /// kernels built with `TRACE_*` marks, see kernels.cu; [`Gpu::trace_take`]).
    trace: Option<(u64, usize, u64)>,
}

/// Words of one timeline record (`g_trace` in kernels.cu): eight %globaltimer marks (ns, 0 when
/// not taken; `TRACE_MARKS`), then tag | warp << 16 | SM << 24 | linear block << 32.
pub const TRACE_WORDS: usize = 9;

/// Bytes of the pinned staging buffer: large copies go through it in pieces this size.
const STAGING_BYTES: usize = 32 << 20;

impl Gpu {
    /// Opens device `ordinal` and compiles the kernels for it (FP8 tensor cores: sm_89 or newer).
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        // cudarc panics when a library it loads at run time is missing: ask first.
        // SAFETY: these only probe for the shared libraries.
        let (driver, nvrtc) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                cudarc::nvrtc::sys::is_culib_present(),
            )
        };
        if !driver {
            return Err(ModelError::Device(
                "the NVIDIA driver (libcuda.so) is not installed here; the GPU engine needs it \
                 (GLMFLEET_DEVICE=cpu runs the model on the CPU)"
                    .into(),
            ));
        }
        if !nvrtc {
            return Err(ModelError::Device(
                "libnvrtc.so (CUDA's run-time compiler, which builds the GPU kernels) was not \
                 found: install the CUDA runtime or put its lib directory on LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev_err("opening the CUDA device"))?;
        // One stream, ordered by construction: cudarc's per-buffer events would only add host work
        // and cannot be captured into graphs.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(dev_err("creating a stream"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(dev_err("reading the compute capability"))?;
        let arch: &'static str = match (major, minor) {
            (8, 9) => "sm_89",
            (9, 0) => "sm_90",
            (10, 0) => "sm_100",
            (12, 0) => "sm_120",
            (m, _) if m >= 9 => "sm_90",
            _ => {
                return Err(ModelError::Device(format!(
                    "compute capability {major}.{minor}: the kernels need FP8 tensor cores (8.9 or newer)"
                )))
            }
        };
        let trace = std::env::var("GLMFLEET_TRACE").is_ok_and(|v| v == "1");
        let mut options = vec!["--std=c++17".into(), "-default-device".into()];
        if trace {
            options.push("-DGLMFLEET_TRACE".into());
        }
        if std::env::var("GLMFLEET_L2_HINT").is_ok_and(|v| v == "0") {
            options.push("-DGLMFLEET_NO_L2_HINT".into());
        }
        // compile-time kernel variants for A/B runs ("NAME=VALUE ..."; the kernels' #ifndef
        // defaults otherwise)
        if let Ok(defs) = std::env::var("GLMFLEET_KERNEL_DEFINES") {
            options.extend(defs.split_whitespace().map(|d| format!("-D{d}")));
        }
        let ptx = compile_ptx_with_opts(
            SOURCE,
            CompileOptions {
                arch: Some(arch),
                options,
                ..Default::default()
            },
        )
        .map_err(dev_err("compiling kernels.cu with NVRTC"))?;
        let module = ctx.load_module(ptx).map_err(dev_err("loading kernels"))?;
        let trace = if trace {
            let global = |name| {
                module
                    .get_global(name, &stream)
                    .map(|v| (v.device_ptr(&stream).0, v.len()))
                    .map_err(dev_err("finding the timeline buffer"))
            };
            let ((records, bytes), (count, _)) = (global("g_trace")?, global("g_trace_n")?);
            Some((records, bytes / (8 * TRACE_WORDS), count))
        } else {
            None
        };
        let f = Funcs::load(&module)?;
        for func in [
            &f.gemm_fp8_m64,
            &f.gemm_bf16_m64,
            &f.gemm_fp8_m16,
            &f.gemm_bf16_m16,
        ] {
            raise_smem_limit(func, gemm_smem(64), "raising the GEMM shared-memory limit")?;
        }
        for (func, d) in f.attn() {
            raise_smem_limit(
                func,
                attn_smem(d),
                "raising the attention shared-memory limit",
            )?;
        }
        // the GEMV kernels stage their input rows in shared memory: as much as the device allows
        // beside their static shared memory (under 8 KiB)
        let smem_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(dev_err("reading the shared-memory limit"))? as usize;
        let gemv_smem = smem_optin.saturating_sub(8192);
        let smem_per_sm =
            ctx.attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
            )
            .map_err(dev_err("reading the shared memory of an SM"))? as usize;
        for func in f.gemv() {
            raise_smem_limit(func, gemv_smem, "raising the GEMV shared-memory limit")?;
        }
        let clusters = major >= 9
            && ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH)
                .is_ok_and(|v| v != 0);
        if clusters {
            for (func, _) in f.attn() {
                func.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                    1,
                )
                .map_err(dev_err("allowing 16-block clusters"))?;
            }
        }
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(dev_err("reading the SM count"))? as usize;
        Ok(Arc::new(Self {
            ctx,
            stream,
            f,
            name,
            sm_count,
            gemv_smem,
            smem_per_sm,
            pdl: major >= 9 && std::env::var("GLMFLEET_PDL").map_or(true, |v| v != "0"),
            clusters,
            pdl_graphs: AtomicBool::new(false),
            capturing: AtomicBool::new(false),
            staging: Mutex::new(None),
            trace,
        }))
    }

    /// The timeline records the kernels wrote since the last call ([`TRACE_WORDS`] words each),
    /// after the stream's work; None unless the kernels were built with the marks
    /// (`GLMFLEET_TRACE=1`). Records past the buffer's capacity are dropped.
    pub fn trace_take(&self) -> Result<Option<Vec<[u64; TRACE_WORDS]>>> {
        let Some((records, cap, count)) = self.trace else {
            return Ok(None);
        };
        let mut n = [0u32];
        self.download(count, &mut n)?;
        let mut flat = vec![0u64; (n[0] as usize).min(cap) * TRACE_WORDS];
        self.download(records, &mut flat)?;
        self.upload(count, &[0u32])?;
        self.sync()?;
        Ok(Some(
            flat.chunks_exact(TRACE_WORDS)
                .map(|c| std::array::from_fn(|i| c[i]))
                .collect(),
        ))
    }

    /// Whether launches being captured into a graph use PDL (when [`Gpu::pdl`]).
    pub fn pdl_graphs(&self) -> bool {
        self.pdl_graphs.load(Ordering::Relaxed)
    }

    /// Sets [`Gpu::pdl_graphs`] (graphs captured before keep what they were captured with).
    pub fn set_pdl_graphs(&self, on: bool) {
        self.pdl_graphs.store(on, Ordering::Relaxed);
    }

    /// Marks a graph capture on our stream as begun or ended (launches inside go without PDL).
    pub fn set_capturing(&self, on: bool) {
        self.capturing.store(on, Ordering::Relaxed);
    }

    /// Whether a graph is being captured on our stream ([`Gpu::set_capturing`]).
    pub fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// How many blocks using `smem` bytes of shared memory (dynamic and static) an SM holds by
    /// shared memory, at most `max` (the kernel's launch bounds, which also keep its threads and
    /// registers within an SM's); the driver reserves 1 KiB of each block's.
    pub fn blocks_per_sm(&self, smem: usize, max: usize) -> usize {
        (self.smem_per_sm / (smem + 1024)).min(max)
    }

    /// Launches `f` on our stream with `params` (pointers to each argument's value), with the
    /// programmatic-dependent-launch attribute when [`Gpu::pdl`] and no graph is being captured,
    /// as clusters of `cluster_z` blocks along z when above 1 (use [`launch!`]).
    ///
    /// # Safety
    /// `params` must match the kernel's parameters in number, order and types.
    pub unsafe fn launch_raw(
        &self,
        f: &CudaFunction,
        (grid, block, smem): ((u32, u32, u32), (u32, u32, u32), u32),
        cluster_z: u32,
        params: &mut [*mut std::ffi::c_void],
    ) -> std::result::Result<(), cudarc::driver::DriverError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: plain C structs (id, padding, value union) for which zero is valid
        let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        if self.pdl && (self.pdl_graphs() || !self.capturing()) {
            attrs[n].id =
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[n].value.programmaticStreamSerializationAllowed = 1;
            n += 1;
        }
        if cluster_z > 1 {
            attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            attrs[n].value.clusterDim.x = 1;
            attrs[n].value.clusterDim.y = 1;
            attrs[n].value.clusterDim.z = cluster_z;
            n += 1;
        }
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n as u32,
        };
        // SAFETY: the caller vouches for `params`; the config outlives the call
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(dev_err("reading device memory"))
    }

    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(dev_err("synchronising the stream"))
    }

    /// Zeroes `bytes` at `ptr` on our stream (capturable into a graph).
    pub fn memset0(&self, ptr: u64, bytes: usize) -> Result<()> {
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }
            .map_err(dev_err("memset"))
    }

    /// Copies host data to `ptr` (pageable memory: the call returns once the data is staged).
    pub fn upload<T: DeviceRepr>(&self, ptr: u64, data: &[T]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        unsafe { result::memcpy_htod_async(ptr, data, self.stream.cu_stream()) }
            .map_err(dev_err("host-to-device copy"))
    }

    /// Copies `out.len()` elements from `ptr` and waits for them.
    pub fn download<T: DeviceRepr>(&self, ptr: u64, out: &mut [T]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        unsafe { result::memcpy_dtoh_async(out, ptr, self.stream.cu_stream()) }
            .map_err(dev_err("device-to-host copy"))?;
        self.sync()
    }

    /// Copies `out.len()` floats from `ptr` and waits for them, through the pinned staging
    /// buffer: a copy into pageable memory runs at about 1.3 GB/s on the H200 machines, one into
    /// page-locked memory at the bus's speed. Logits rows come back this way.
    pub fn download_f32(&self, ptr: u64, out: &mut [f32]) -> Result<()> {
        let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let pinned = staging.get_or_insert_with(|| {
            // No write-combining: the host reads this memory. SAFETY: the contents are only
            // read after a copy into them completed.
            unsafe { self.ctx.alloc_pinned_with_flags::<u8>(STAGING_BYTES, 0) }
                .map_err(|e| tracing::warn!("no pinned staging buffer, pageable copies: {e:?}"))
                .ok()
        });
        let Some(pinned) = pinned else {
            return self.download(ptr, out);
        };
        let buf = pinned
            .as_mut_slice()
            .map_err(dev_err("pinned staging buffer"))?;
        let per = STAGING_BYTES / 4;
        for (i, chunk) in out.chunks_mut(per).enumerate() {
            let bytes = &mut buf[..chunk.len() * 4];
            let at = ptr + (i * per * 4) as u64;
            unsafe { result::memcpy_dtoh_async(bytes, at, self.stream.cu_stream()) }
                .map_err(dev_err("device-to-host copy"))?;
            self.sync()?;
            copy_parallel(bytemuck::cast_slice_mut::<f32, u8>(chunk), bytes);
        }
        Ok(())
    }
}

/// Lets `func` use `bytes` of dynamic shared memory per block (above the default 48 KiB).
fn raise_smem_limit(func: &CudaFunction, bytes: usize, what: &'static str) -> Result<()> {
    func.set_attribute(
        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(dev_err(what))
}

/// `dst.copy_from_slice(src)`, over several threads when large: a first write into fresh host
/// memory takes a page fault per 4 KiB, and faults on different threads proceed in parallel.
fn copy_parallel(dst: &mut [u8], src: &[u8]) {
    const PART: usize = 2 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || dst.len() < 2 * PART {
        dst.copy_from_slice(src);
        return;
    }
    let per = dst.len().div_ceil(threads).max(PART);
    std::thread::scope(|s| {
        for (d, c) in dst.chunks_mut(per).zip(src.chunks(per)) {
            s.spawn(move || d.copy_from_slice(c));
        }
    });
}

/// An owned device allocation.
pub struct DevBuf {
    _mem: CudaSlice<u8>,
    ptr: u64,
    bytes: usize,
}

impl DevBuf {
    pub fn zeros(g: &Gpu, bytes: usize) -> Result<Self> {
        let mem = g
            .stream
            .alloc_zeros::<u8>(bytes.max(256))
            .map_err(|e| ModelError::Device(format!("allocating {bytes} bytes: {e:?}")))?;
        let ptr = mem.device_ptr(&g.stream).0;
        Ok(Self {
            _mem: mem,
            ptr,
            bytes,
        })
    }

    pub fn from_host<T: DeviceRepr>(g: &Gpu, data: &[T]) -> Result<Self> {
        let b = Self::zeros(g, std::mem::size_of_val(data))?;
        g.upload(b.ptr, data)?;
        Ok(b)
    }

    pub fn p(&self) -> u64 {
        self.ptr
    }

    /// Address `off` bytes in.
    pub fn at(&self, off: usize) -> u64 {
        self.ptr + off as u64
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Launches a kernel of [`Funcs`] on the GPU's stream: `launch!(gpu, name, grid, block, smem; args...)`,
/// or as clusters of `z` blocks along the grid's z (which it must divide; [`Gpu::clusters`]):
/// `launch!(gpu, name, grid, block, smem, cluster z; args...)`; an instantiation of a kernel
/// instantiated several ways as `name[index]`. Pointer arguments are `u64` device addresses
/// (0 = null).
#[macro_export]
macro_rules! launch {
    ($g:expr, $f:ident $([$i:expr])?, $grid:expr, $block:expr, $smem:expr; $($arg:expr),* $(,)?) => {
        $crate::launch!($g, $f $([$i])?, $grid, $block, $smem, cluster 1u32; $($arg),*)
    };
    ($g:expr, $f:ident $([$i:expr])?, $grid:expr, $block:expr, $smem:expr, cluster $cz:expr; $($arg:expr),* $(,)?) => {{
        let g: &$crate::gpu::Gpu = &$g;
        let (grid, block, smem): ((u32, u32, u32), (u32, u32, u32), u32) =
            ($grid, $block, ($smem) as u32);
        // each argument stays in its own local (shadowed, not dropped) until the launch read it
        let mut params: Vec<*mut ::core::ffi::c_void> = Vec::new();
        $( let a = $arg; params.push(&a as *const _ as *mut ::core::ffi::c_void); )*
        let f = &g.f.$f $([$i])?;
        // SAFETY: the kernel's parameters are these values in this order (kernels.cu)
        let cz: u32 = $cz;
        unsafe { g.launch_raw(f, (grid, block, smem), cz, &mut params) }
            .map_err($crate::gpu::device::dev_err(stringify!($f)))
    }};
}
