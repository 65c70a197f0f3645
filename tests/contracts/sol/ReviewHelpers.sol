// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// A payee that refuses ETH by reverting with as much return data as the gas it was given
/// can pay memory for ("return bomb"): copying that data back costs the caller about the same,
/// and the caller has only the 1/64 that EIP-150 kept back.
contract BombPayee {
    receive() external payable {
        assembly {
            let budget := div(mul(gas(), 9), 10)
            let w := 0
            let step := 65536
            for {} gt(step, 0) {} {
                let nw := add(w, step)
                switch lt(add(mul(3, nw), div(mul(nw, nw), 512)), budget)
                case 1 { w := nw }
                default { step := div(step, 2) }
            }
            revert(0, mul(w, 32))
        }
    }
}
