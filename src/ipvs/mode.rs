//! Who programs IPVS for the VIPs, and the link each data plane binds them on. The agent, `ironlb verify` and the
//! lab all choose by these values; nothing here touches the kernel.

/// IronLB's own dummy device for VIPs in direct mode (kube-proxy prunes `kube-ipvs0` of addresses it did not add).
pub const DIRECT_LINK: &str = "ironlb0";
/// The link kube-proxy creates in IPVS mode.
pub const KUBE_PROXY_LINK: &str = "kube-ipvs0";

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// kube-proxy programs IPVS (ingress ipMode VIP); IronLB binds the VIPs on kube-ipvs0 and verifies.
    #[default]
    Integrated,
    /// IronLB programs IPVS itself (ingress ipMode Proxy) and binds the VIPs on ironlb0.
    Direct,
}

impl Mode {
    /// The link the VIPs are bound on, given the one asked for: in direct mode kube-proxy's link becomes
    /// [`DIRECT_LINK`], since kube-proxy would prune the addresses IronLB binds there.
    pub fn vip_link(self, asked: &str) -> &str {
        match self {
            Mode::Direct if asked == KUBE_PROXY_LINK => DIRECT_LINK,
            _ => asked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_mode_never_binds_on_kube_proxys_link() {
        assert_eq!(Mode::Direct.vip_link(KUBE_PROXY_LINK), DIRECT_LINK);
        assert_eq!(Mode::Direct.vip_link("lb0"), "lb0");
        assert_eq!(Mode::Integrated.vip_link(KUBE_PROXY_LINK), KUBE_PROXY_LINK);
        assert_eq!(Mode::Integrated.vip_link("lb0"), "lb0");
    }
}
