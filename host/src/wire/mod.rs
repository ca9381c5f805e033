//! Varint, protobuf messages and the frame codec of protocol v8. (Wire issue.)
