//! Generates the mock LND's server types from LND's own `lightning.proto` and
//! `routerrpc/router.proto` (vendored in `proto/lnd/`; the router's file imports
//! `lightning.proto`), without a `protoc` binary: protox compiles the files to descriptors
//! in pure Rust, tonic-build turns them into prost messages and tonic server traits (the
//! `lnrpc` and `routerrpc` packages).
//!
//! Methods the mock does not implement answer `Unimplemented` (tonic-build's default
//! stubs). The proto's comments are left out of the generated code: they are not Rust
//! documentation (rustdoc would try indented examples as doctests); read them in the
//! `.proto` file.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/lnd/lightning.proto",
        "proto/lnd/routerrpc/router.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto/lnd"])?;
    // tonic-build 0.12 does not hand its `disable_comments` to prost-build: the messages'
    // comments are disabled on prost-build's own config, the service's on tonic-build's.
    let mut messages = prost_build::Config::new();
    messages.disable_comments(["."]);
    let mut builder = tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .generate_default_stubs(true);
    for file in &descriptors.file {
        for service in &file.service {
            let service_name = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                builder = builder.disable_comments(format!("{service_name}.{}", method.name()));
            }
            builder = builder.disable_comments(service_name);
        }
    }
    builder.compile_fds_with_config(messages, descriptors)?;
    Ok(())
}
