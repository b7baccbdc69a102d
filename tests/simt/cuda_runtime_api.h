// simt stand-in for the CUDA runtime header (tests only).
#pragma once
#include "simt.h"
