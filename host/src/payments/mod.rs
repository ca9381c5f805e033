//! Payment plugin loader and registry. (Plugin host issue.)
