// Image pyramid and NNF resampling shared by the CPU backend (coarse-to-fine EbSynth, Jamriška et al. 2019).
#pragma once

#include <cstdint>
#include <vector>

namespace rr {

struct Image8 {
    std::vector<uint8_t> data;  // [h][w][c]
    int w = 0, h = 0, c = 0;
};

// Level sizes are floor(base * 2^-k) per axis (synthesis.md §2). We build each level by 2x2 box averaging the next finer
// one (floor(floor(W/2^k)/2) == floor(W/2^(k+1)), so the sizes agree with synthesis.md §2): the reference point-samples
// the full-resolution image, which aliases fine texture in the guides; averaging keeps coarse matching honest.
inline Image8 halve(const Image8& a) {
    Image8 b;
    b.w = a.w / 2;
    b.h = a.h / 2;
    b.c = a.c;
    b.data.resize((size_t)b.w * b.h * b.c);
    for (int y = 0; y < b.h; ++y)
        for (int x = 0; x < b.w; ++x)
            for (int k = 0; k < b.c; ++k) {
                const size_t i00 = ((size_t)(2 * y) * a.w + 2 * x) * a.c + k;
                const size_t i10 = i00 + a.c, i01 = i00 + (size_t)a.w * a.c, i11 = i01 + a.c;
                const int s = a.data[i00] + a.data[i10] + a.data[i01] + a.data[i11];
                b.data[((size_t)y * b.w + x) * b.c + k] = (uint8_t)((s + 2) / 4);
            }
    return b;
}

// pyramid[0] = coarsest ... pyramid[levels-1] = the image itself.
inline std::vector<Image8> build_pyramid(const uint8_t* data, int w, int h, int c, int levels) {
    std::vector<Image8> p(levels);
    p[levels - 1].data.assign(data, data + (size_t)w * h * c);
    p[levels - 1].w = w;
    p[levels - 1].h = h;
    p[levels - 1].c = c;
    for (int l = levels - 2; l >= 0; --l) p[l] = halve(p[l + 1]);
    return p;
}

}  // namespace rr
