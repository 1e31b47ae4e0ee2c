/* A module whose build signature differs from the broker's (as if built
 * against another proton/OpenSSL or without the sanitizers): refused with
 * both signatures in the message. */
#include "config.h"

#include "hadron/module.h"

static const hd_module_desc_t desc = {
    .abi_major = HD_MODULE_ABI_MAJOR,
    .abi_minor = HD_MODULE_ABI_MINOR,
    .size = sizeof(hd_module_desc_t),
    .build_signature = "abi" HD_STR(HD_MODULE_ABI_MAJOR) "/proton0.1/openssl0",
    .name = "bad_signature",
    .version = "1",
    .description = "test module with a foreign build signature",
};

HD_MODULE_EXPORT(desc)
