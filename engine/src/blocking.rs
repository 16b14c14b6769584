//! The blocking twins of the async API, made by one macro: each runs its async method to
//! completion on the calling thread (parking it until the executor answers), so plain threads
//! use the engine without a runtime.

/// `blocking!(name_blocking = name(&self, arg: Type, ...) -> Output);` inside an `impl` block
/// defines `name_blocking`, the blocking twin of the async method `name` (`&mut self` works
/// too).
macro_rules! blocking {
    ($blocking:ident = $async_fn:ident(&self $(, $arg:ident: $ty:ty)*) -> $out:ty) => {
        #[doc = concat!("Blocking [`", stringify!($async_fn), "`](Self::", stringify!($async_fn), ").")]
        pub fn $blocking(&self $(, $arg: $ty)*) -> $out {
            futures_lite::future::block_on(self.$async_fn($($arg),*))
        }
    };
    ($blocking:ident = $async_fn:ident(&mut self $(, $arg:ident: $ty:ty)*) -> $out:ty) => {
        #[doc = concat!("Blocking [`", stringify!($async_fn), "`](Self::", stringify!($async_fn), ").")]
        pub fn $blocking(&mut self $(, $arg: $ty)*) -> $out {
            futures_lite::future::block_on(self.$async_fn($($arg),*))
        }
    };
}

pub(crate) use blocking;
