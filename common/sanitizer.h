// Whether this is an AddressSanitizer build (gcc defines __SANITIZE_ADDRESS__, clang has the feature test): code
// that replaces or bypasses malloc (the caching CPU allocator) stands aside so ASan sees every allocation, and tests
// that bound RSS run their work but skip the bound (ASan's shadow memory and quarantine are in no memory plan).
#pragma once

namespace qlora {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#else
inline constexpr bool kAddressSanitizer = false;
#endif

}  // namespace qlora
