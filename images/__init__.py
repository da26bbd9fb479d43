"""jailcc.images: toolchain images built from real compilers, and compiler identities.

An image is a read-only squashfs root filesystem holding what a compiler needs to turn
preprocessed C/C++ into an object file (driver, compiler proper, assembler, shared libraries,
ELF loader) plus a manifest at /.jailcc/manifest.json. Modules:

- identity:  compiler_identity(), cheap and cached; imported by the client on every compile
- probe:     asks a compiler driver what it is and which programs it runs
- collect:   the file closure (programs, libraries, loader, every symlink on the way)
- squashfs:  mksquashfs/unsquashfs calls, and read_manifest()
- manifest:  the manifest format
- inspect:   reads (and verifies) an image for jailccd, as the network service's uid
- build:     staging + manifest + image, atomically
- verify:    checks an image's contents against its manifest
- directory: which files of an image directory (jailccd's, `jailcc-image list`) are images
- cli:       the jailcc-image command
"""
